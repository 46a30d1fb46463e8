"""The payload codec: every value round-trips; bad bytes are typed errors."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec
from lttx.errors import BadRequest, EncodeError
from lttx.state.store import strict_equal
from lttx.wire.ext import Encoded

from ..strategies import values


class CodecTests(SynchronousTestCase):
    @given(values)
    def test_any_value_round_trips(self, value: object) -> None:
        """Any value the protocol carries decodes to an equal value of the same types."""
        decoded = codec.decode(codec.encode(value))
        self.assertTrue(strict_equal(decoded, value), (value, decoded))

    @given(st.floats(allow_nan=True))
    def test_floats_keep_their_bits(self, value: float) -> None:
        """Floats (NaN and infinities too) survive exactly."""
        decoded = codec.decode(codec.encode(value))
        self.assertTrue(strict_equal(decoded, value))

    def test_str_and_bytes_stay_apart(self) -> None:
        self.assertEqual(codec.decode(codec.encode(["a", b"a"])), ["a", b"a"])
        self.assertIsInstance(codec.decode(codec.encode(b"a")), bytes)

    def test_unencodable_values(self) -> None:
        """Types outside the protocol, and ints beyond 64 bits, raise EncodeError."""
        for value in ({1, 2}, object(), 2**64, -(2**63) - 1, {"a": {1j}}):
            self.assertRaises(EncodeError, codec.encode, value)

    @given(st.binary(max_size=64))
    def test_random_bytes_decode_or_raise_bad_request(self, data: bytes) -> None:
        """Garbage never raises anything but BadRequest."""
        try:
            codec.decode(data)  # some garbage is valid MessagePack: that is fine
        except BadRequest as e:
            self.assertTrue(e.message)

    def test_extension_types_refused(self) -> None:
        """Extension type codes outside lttx.wire.ext (0, 6-127, negative) are refused."""
        for code in (0, 6, 9, 127, 0x80, 0xfb):
            self.assertRaises(BadRequest, codec.decode, bytes([0xd4, code, 0]))

    def test_truncated_and_trailing(self) -> None:
        self.assertRaises(BadRequest, codec.decode, b"\x92\x01")
        self.assertRaises(BadRequest, codec.decode, b"\x01\x02")
        self.assertRaises(BadRequest, codec.decode, b"")


def _general(value: object) -> bytes:
    """What msgpack.packb writes with the protocol's options (the general way)."""
    return msgpack.packb(value, use_bin_type=True, datetime=False,
                         default=codec.encoded_default)


class EncoderTests(SynchronousTestCase):
    """An Encoder keeps a Packer for plain values: the same bytes as the
    general way (encode, encode_pieces), whoever holds it."""

    def setUp(self) -> None:
        self.encoder = codec.Encoder()

    @given(values)
    def test_the_kept_packer_writes_the_general_bytes(self, value: object) -> None:
        """Any value (extension values too): encode and the joined pieces are
        packb's bytes, with the kept packer free and with it taken."""
        expected = _general(value)
        self.assertEqual(self.encoder.encode(value), expected)
        self.assertEqual(b"".join(self.encoder.encode_pieces(value)), expected)
        with self.encoder._lock:  # another thread's, or an encode within an encode
            self.assertEqual(self.encoder.encode(value), expected)
            self.assertEqual(b"".join(self.encoder.encode_pieces(value)), expected)

    def test_a_failed_encode_leaves_nothing_behind(self) -> None:
        """An unencodable value raises the same EncodeError either way, and
        the payload encoded next holds none of its bytes."""
        for value in ([1, "half", {1, 2}], ["x" * 100, 2**64], [b"y", object()]):
            with self.assertRaises(EncodeError) as kept:
                self.encoder.encode(value)
            with self.assertRaises(EncodeError) as general:
                codec.encode(value)
            self.assertEqual(str(kept.exception), str(general.exception))
            self.assertRaises(EncodeError, self.encoder.encode_pieces, value)
            self.assertEqual(self.encoder.encode([1]), b"\x91\x01")

    def test_a_large_extension_value_is_still_spliced(self) -> None:
        """A value holding large extension data takes the general way: its data
        is a piece of its own."""
        data = b"d" * codec.SPLICE_FROM
        pieces = self.encoder.encode_pieces([1, 2, Encoded("numpy.ndarray", data)])
        self.assertEqual(len(pieces), 3)
        self.assertIs(pieces[1], data)

    def test_threads_encoding_at_once_each_get_their_bytes(self) -> None:
        """Eight threads encode at once with one Encoder (its packer taken by
        one, the others the general way): every payload is its own bytes."""
        import sys
        import threading

        # (Every third holds an extension value: the kept packer calls
        # Python code there, where another thread may run.)
        payloads = [[i, "x" * (i % 50), {"k": [i, float(i), b"b" * (i % 7)]},
                     Encoded("numpy.ndarray", b"a" * i) if i % 3 == 0 else None]
                    for i in range(2000)]
        wrong: list[int] = []

        def encode_all(offset: int) -> None:
            for i in range(len(payloads)):
                value = payloads[(i + offset) % len(payloads)]
                if self.encoder.encode(value) != _general(value):
                    wrong.append(i)

        threads = [threading.Thread(target=encode_all, args=(k * 250,)) for k in range(8)]
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())
        sys.setswitchinterval(1e-6)  # threads switch as often as they can
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(wrong, [])

    def test_a_large_payload_leaves_no_large_buffer_behind(self) -> None:
        """A payload over KEEP_AFTER gets the Encoder a new packer (a Packer
        keeps the largest buffer it grew to); a small one keeps it; bytes as
        packb's."""
        before = self.encoder._packer
        self.assertEqual(self.encoder.encode(["x" * 100]), msgpack.packb(["x" * 100]))
        self.assertIs(self.encoder._packer, before)
        big = ["x" * codec.KEEP_AFTER]
        self.assertEqual(self.encoder.encode(big), msgpack.packb(big))
        self.assertIsNot(self.encoder._packer, before)
        self.assertEqual(self.encoder.encode_pieces(["y"]), [msgpack.packb(["y"])])
