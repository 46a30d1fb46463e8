"""
The blocking client's callback thread (lttx.client.callbacks): order, the
bound, a failing callback, gaps and watch values in order with messages.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lttx.client.callbacks import CallbackThread
from lttx.client.messages import Message, MessageQueue


def message(seq: int) -> Message:
    return Message("hq", "k", seq, seq)


class CallbackThreadTests(SynchronousTestCase):
    def test_in_order_in_one_thread_with_gaps_and_values(self) -> None:
        """Messages, a gap and a watch value run in the order handed over,
        all in the thread named lttx-callbacks."""
        thread = CallbackThread(MessageQueue())
        seen: list[Any] = []

        def record(item: Any) -> None:
            seen.append((item, threading.current_thread().name))

        on_message = thread.for_messages(record)
        on_gap = thread.for_gaps(lambda channel, first, last: record(("gap", channel, first, last)))
        on_value = thread.for_values(lambda value: record(("value", value)))
        on_message(message(1))
        on_gap("hq", 2, 3)
        on_value("v")
        on_message(message(4))
        thread.stop(10)
        self.assertEqual(seen, [(message(1), "lttx-callbacks"),
                                (("gap", "hq", 2, 3), "lttx-callbacks"),
                                (("value", "v"), "lttx-callbacks"),
                                (message(4), "lttx-callbacks")])

    def test_a_failing_callback_is_logged_and_later_ones_run(self) -> None:
        """A callback that raises: its error is logged once, the messages after
        it still get theirs."""
        thread = CallbackThread(MessageQueue())
        seen: list[int] = []

        def callback(m: Message) -> None:
            if m.seq == 1:
                raise ValueError("boom")
            seen.append(m.seq)

        deliver = thread.for_messages(callback)
        for seq in range(3):
            deliver(message(seq))
        thread.stop(10)
        self.assertEqual(seen, [0, 2])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_bounded_like_q_drops_are_counted(self) -> None:
        """With the callback blocked, past Q's limit new messages are dropped and
        counted in Q.dropped; the rest run, in order, once it goes on."""
        q = MessageQueue(limit=10)
        thread = CallbackThread(q)
        go = threading.Event()
        seen: list[int] = []

        def callback(m: Message) -> None:
            go.wait(10)
            seen.append(m.seq)

        deliver = thread.for_messages(callback)
        deliver(message(0))
        while thread._calls is not None and thread._calls.qsize():  # the first is taken
            pass
        for seq in range(1, 16):
            deliver(message(seq))
        self.assertEqual(q.dropped, 5)
        go.set()
        thread.stop(10)
        self.assertEqual(seen, list(range(11)))
