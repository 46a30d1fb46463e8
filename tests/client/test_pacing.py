"""
PushPacing (lttx.client.pacing) on a clock of the test's: which pushes of a
blocking client leave from their thread.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from lttx.client import pacing
from lttx.client.pacing import DIRECT_PUSH_GAP, DIRECT_PUSH_RUN, STREAM_REST, PushPacing


class PushPacingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 1000.0
        self.patch(pacing, "time", SimpleNamespace(perf_counter=lambda: self.now))
        self.pacing = PushPacing()

    def burst(self, n: int, spacing: float = 1e-6) -> list[bool]:
        out = []
        for _ in range(n):
            out.append(self.pacing.direct())
            self.now += spacing
        return out

    def test_the_first_pushes_of_a_burst_leave_the_rest_are_batched(self) -> None:
        self.assertEqual(self.burst(DIRECT_PUSH_RUN + 3),
                         [True] * DIRECT_PUSH_RUN + [False] * 3)

    def test_after_a_pause_a_burst_leaves_again(self) -> None:
        self.burst(3)
        self.now += DIRECT_PUSH_GAP
        self.assertEqual(self.burst(3), [True] * 3)

    def test_a_stream_stays_batched_until_it_rested_since_its_last_take(self) -> None:
        """A spilled burst, taken by the reactor thread: a new burst soon
        after is batched; one after STREAM_REST since the take leaves at once,
        however long the stream was."""
        self.assertEqual(self.burst(DIRECT_PUSH_RUN + 1)[-1], False)
        self.now += 10.0  # the reactor thread takes them late
        self.pacing.taken()
        self.now += max(DIRECT_PUSH_GAP, STREAM_REST / 2)
        self.assertEqual(self.burst(2), [False, False])
        self.pacing.taken()
        self.now += STREAM_REST + DIRECT_PUSH_GAP
        self.assertEqual(self.burst(3), [True] * 3)

    def test_bursts_spaced_wider_than_the_rest_always_leave(self) -> None:
        """Ten ticks every millisecond (the latency benchmark's pattern), never
        spilling: every one of them from its thread."""
        for _ in range(50):
            self.assertEqual(self.burst(10), [True] * 10)
            self.now += 1e-3
