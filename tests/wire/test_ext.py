"""
The extension types as the daemon sees them: opaque :class:`Encoded` values,
accepted for exactly the codes of lttx.wire.ext and written back byte for
byte; and the daemon loads none of pandas, pyarrow, polars, numpy.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.errors import BadRequest, DecodeError, MissingDependency
from lttx.wire import codec
from lttx.wire.ext import CODES, KINDS, MISSING, Encoded

from ..common import PACKAGE_ROOT

# Data sizes around each MessagePack ext form: fixext 1/2/4/8/16, ext 8/16/32.
sizes = st.sampled_from([0, 1, 2, 3, 4, 8, 16, 17, 255, 256, 65535, 65536]) | st.integers(0, 300)


class EncodedTests(SynchronousTestCase):
    @given(st.sampled_from(sorted(KINDS)), sizes, st.data())
    def test_known_codes_re_encode_byte_for_byte(self, code: int, size: int,
                                                 data: st.DataObject) -> None:
        """An extension of a known code, alone or nested, decodes to an Encoded
        and encodes back to the very same bytes."""
        body = data.draw(st.binary(min_size=size, max_size=size))
        payload = codec.encode([5, "ch", {"k": [Encoded(KINDS[code], body)]}])
        decoded = codec.decode(payload)
        value = decoded[2]["k"][0]
        self.assertEqual((type(value), value.kind, value.data), (Encoded, KINDS[code], body))
        self.assertEqual(codec.encode(decoded), payload)

    def test_the_codes(self) -> None:
        """One code per kind, as docs/protocol.md lists them."""
        self.assertEqual(CODES, {"pandas.DataFrame": 1, "pandas.Series": 2,
                                 "polars.DataFrame": 3, "polars.Series": 4,
                                 "numpy.ndarray": 5})
        self.assertEqual(codec.encode(Encoded("numpy.ndarray", b"\x01")), b"\xd4\x05\x01")

    def test_other_codes_are_refused(self) -> None:
        """Every code outside the table is a BadRequest, whatever its length."""
        for code in [0, *range(6, 128)]:
            for body in (b"", b"x", b"x" * 300):
                payload = msgpack.packb(msgpack.ExtType(code, body))
                with self.assertRaises(BadRequest) as caught:
                    codec.decode(payload)
                self.assertIn(f"extension type {code} ", caught.exception.message)

    def test_equality_is_kind_and_bytes(self) -> None:
        a = Encoded("numpy.ndarray", b"12")
        self.assertEqual(a, Encoded("numpy.ndarray", b"12"))
        self.assertNotEqual(a, Encoded("pandas.Series", b"12"))
        self.assertNotEqual(a, b"12")
        self.assertEqual(hash(a), hash(Encoded("numpy.ndarray", bytearray(b"12"))))
        self.assertEqual(copy.deepcopy(a), a)
        self.assertEqual(pickle.loads(pickle.dumps(a)), a)
        self.assertRaises(ValueError, Encoded, "pandas.Panel", b"")
        with self.assertRaises(AttributeError):
            a.data = b"other"  # type: ignore[misc]

    def test_using_a_placeholder_names_the_extra(self) -> None:
        """Any use but kind/data raises MissingDependency naming the pip extra."""
        frame = Encoded("pandas.DataFrame", b"...", f"{MISSING} pandas")
        uses = [lambda: frame.head(), lambda: len(frame), lambda: frame["a"],
                lambda: list(frame), lambda: frame + 1, lambda: frame.columns]
        for use in uses:
            with self.assertRaises(MissingDependency) as caught:
                use()
            self.assertIn("pip install 'lttx[pandas]'", caught.exception.message)
            self.assertIn("pandas.DataFrame (3 bytes)", caught.exception.message)
        self.assertIsInstance(caught.exception, ImportError)
        with self.assertRaises(MissingDependency) as caught:
            Encoded("polars.Series", b"").to_list()
        self.assertIn("lttx[polars]", caught.exception.message)
        self.assertEqual(frame.code, 1)
        self.assertTrue(frame)
        self.assertIs(lttx.Encoded, Encoded)

    def test_unreadable_bytes_say_so(self) -> None:
        """A placeholder kept for bytes the client could not read raises DecodeError."""
        broken = Encoded("numpy.ndarray", b"\x07", "not an ndarray of header version 1")
        with self.assertRaises(DecodeError) as caught:
            broken.sum()
        self.assertIn("cannot be read: not an ndarray", caught.exception.message)


class DaemonImportsTests(SynchronousTestCase):
    def test_the_daemon_loads_no_dataframe_library(self) -> None:
        """Importing the daemon (service, protocol, storage, engines) and running
        its codec over an extension loads none of pandas, pyarrow, polars, numpy."""
        code = (
            "import sys, lttx.tap, lttx.server.protocol, lttx.storage.durable, "
            "lttx.engines.redis.engine; from lttx.wire import codec; "
            "codec.encode(codec.decode(bytes.fromhex('c7030161626364')[:-1])); "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('pandas', 'pyarrow', 'polars', 'numpy')))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))
        self.assertEqual(result.stdout.strip(), "[]", result.stderr[-2000:])


class EncodePiecesTests(SynchronousTestCase):
    @given(st.lists(st.sampled_from([0, 100, codec.SPLICE_FROM - 1, codec.SPLICE_FROM,
                                     65535, 65536, 200_000]), max_size=4),
           st.sampled_from(sorted(KINDS)))
    def test_pieces_join_to_the_payload(self, sizes: list[int], code: int) -> None:
        """The pieces join to exactly what encode writes; each large extension's
        data is a piece of its own, the very bytes object (not a copy)."""
        datas = [bytes([i]) * n for i, n in enumerate(sizes)]
        value = [1, 9, {"v": [Encoded(KINDS[code], d) for d in datas], "n": b"x"}]
        pieces = codec.encode_pieces(value)
        self.assertEqual(b"".join(pieces), codec.encode(value))
        large = [d for d in datas if len(d) >= codec.SPLICE_FROM]
        self.assertEqual(len(pieces), 1 + 2 * len(large))
        for d, piece in zip(large, pieces[1::2]):
            self.assertIs(piece, d)

    def test_a_value_holding_the_token_is_encoded_whole(self) -> None:
        """Should the random token appear in the value itself, the payload is
        encoded in one piece, still correct."""
        from unittest import mock

        token = b"T" * 16
        stand_in = b"\xc7\x14\x05" + token + b"\x00\x00\x00\x00"
        value = [stand_in, Encoded("numpy.ndarray", b"d" * codec.SPLICE_FROM)]
        with mock.patch.object(codec.os, "urandom", return_value=token):
            pieces = codec.encode_pieces(value)
        self.assertEqual(pieces, [codec.encode(value)])
