"""
The retained log of one channel, alone: appends, both bounds, and positions
reading it at their own pace (hypothesis against a model).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.state.channellog import ENTRY_OVERHEAD, ChannelLog
from lttx.wire import codec


def frame(seq: int, size: int, key: Any = "k") -> bytes:
    """The MESSAGE frame of message ``seq`` of key ``key``, data ``size`` bytes."""
    payload = codec.encode([codec.MESSAGE, "c", key, "x" * size, seq])
    return len(payload).to_bytes(4, "big") + payload


def seq_of(frame_: bytes) -> int:
    return codec.decode(frame_[4:])[4]


# An operation: ("append", size, key) / ("drop", bytes) / ("read", reader, count, conflated)
_operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 300), st.integers(0, 4)),
    st.tuples(st.just("drop"), st.integers(0, 2000)),
    st.tuples(st.just("read"), st.integers(0, 2), st.integers(1, 20), st.booleans()),
), max_size=200)


class ChannelLogTests(SynchronousTestCase):
    def test_frame_of_and_bounds(self) -> None:
        """frame_of is by seq; past history_bytes the oldest go first (down to 15/16
        of the bound), counted."""
        size = len(frame(1, 100)) + ENTRY_OVERHEAD
        log = ChannelLog("hq", None, history_bytes=3 * size + 10)
        for seq in range(1, 6):
            log.append(frame(seq, 100), "k")
        # The 4th passes the bound: cut to 15/16 of it, two messages go; the 5th fits.
        self.assertEqual((log.first_seq, log.next_seq, len(log), log.dropped), (3, 6, 3, 2))
        self.assertIsNone(log.frame_of(2))
        self.assertEqual(seq_of(log.frame_of(5)), 5)
        self.assertEqual(log.read(1, 10)[0], (1, 2))

    def test_last_values_bounded_by_key_count(self) -> None:
        """The newest frame per key, in seq order; past the limit plus a 16th, the
        least recently updated keys go, down to the limit."""
        log = ChannelLog("hq", None, history_bytes=10**6, last_values_limit=16)
        keys = ["a", "b", "a"] + [f"k{i}" for i in range(16)]  # 18 keys: past 16 + 1
        for seq, key in enumerate(keys, 1):
            log.append(frame(seq, 1, key), key)
        # b (seq 2) and a (seq 3) were the least recently updated.
        self.assertEqual([seq_of(f) for f in log.last_values_before(100)], list(range(4, 20)))
        self.assertEqual(log.last_values_before(5), [log.frame_of(4)])
        self.assertEqual(log.last_values_evicted, 2)

    def test_a_new_log_has_a_new_epoch(self) -> None:
        self.assertNotEqual(ChannelLog("a", None, 10).epoch, ChannelLog("a", None, 10).epoch)

    @settings(max_examples=300, deadline=None)
    @given(_operations, st.integers(200, 3000))
    def test_positions_see_ordered_subsequences_with_exact_gaps(
            self, operations: list[tuple], history: int) -> None:
        """Three readers at random paces (some conflating) over a log trimmed by
        both bounds: each gets seqs in increasing order; what it did not get is
        exactly the messages dropped before it read them (reported as gaps) or,
        conflating, older messages of a key it got a newer one of."""
        log = ChannelLog("c", None, history_bytes=history)
        positions = [1, 1, 1]
        got: list[list[int]] = [[], [], []]
        gaps: list[list[tuple[int, int]]] = [[], [], []]
        skipped: list[set[int]] = [set(), set(), set()]
        keys: dict[int, int] = {}
        for op in operations:
            if op[0] == "append":
                seq = log.next_seq
                keys[seq] = op[2]
                log.append(frame(seq, op[1], op[2]), op[2])
            elif op[0] == "drop":
                before = log.bytes
                freed = log.drop_bytes(op[1])
                self.assertEqual(freed, before - log.bytes)
                self.assertTrue(freed >= op[1] or not len(log))
            else:
                _, who, count, conflated = op
                start = positions[who]
                if conflated:
                    gap, frames, positions[who], skips = log.read_conflated(start)
                else:
                    gap, frames, positions[who] = log.read(start, count)
                    skips = 0
                seqs = [seq_of(f) for f in frames]
                if gap is not None:
                    gaps[who].append(gap)
                    self.assertEqual(gap, (start, log.first_seq - 1))
                if conflated and seqs:
                    lo = gap[1] + 1 if gap else start
                    wanted = [s for s in range(lo, positions[who])
                              if not any(keys[t] == keys[s] for t in range(s + 1, positions[who]))]
                    self.assertEqual(seqs, wanted)
                    skipped[who].update(set(range(lo, positions[who])) - set(seqs))
                    self.assertEqual(skips, positions[who] - lo - len(seqs))
                got[who].extend(seqs)
            # The bound holds after every operation, and the byte count is exact.
            size = sum(len(log.frame_of(s)) + ENTRY_OVERHEAD
                       for s in range(log.first_seq, log.next_seq))
            self.assertEqual(log.bytes, size)
            self.assertLessEqual(log.bytes, history)
            self.assertEqual([seq_of(log.frame_of(s)) for s in range(log.first_seq, log.next_seq)],
                             list(range(log.first_seq, log.next_seq)))
        for who in range(3):
            self.assertEqual(got[who], sorted(set(got[who])))
            missed = set(range(1, positions[who])) - set(got[who]) - skipped[who]
            in_gaps = {s for first, last in gaps[who] for s in range(first, last + 1)}
            self.assertEqual(missed, in_gaps)
