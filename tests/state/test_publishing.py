"""
lttx.state.publishing.publish_frames against ChannelRegistry.publish, side by
side: the same logs, frames, last values, bounds and counters, message for
message, and the same refusals.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import LTtxError
from lttx.state.channels import ChannelRegistry
from lttx.state.publishing import publish_frames
from lttx.wire import codec

from ..strategies import values

#: A publish: (channel, key, data); channels and keys include refused ones.
_messages = st.lists(st.tuples(
    st.sampled_from(["a", "b", "c", "", "x@y", 7]),
    st.one_of(st.sampled_from(["k0", "k1", "k2", "k3"]), st.integers(0, 3), st.none(),
              st.lists(st.integers(0, 9), max_size=1)),
    values), max_size=60)


def state(registry: ChannelRegistry) -> dict[str, Any]:
    logs = {}
    for name in ("a", "b", "c", "x@y"):
        log = registry.channel(name)
        if log is not None:
            logs[name] = (log.first_seq, log.next_seq, log.bytes, log.dropped,
                          log.read(log.first_seq, len(log))[1] if len(log) else [],
                          log.arrivals(log.first_seq, len(log)) if len(log) else [],
                          dict(log.last_values), log.last_values_evicted)
    return {"logs": logs, "published": registry.published, "retained": registry.retained,
            "evicted": registry.evicted, "dirty": [log.name for log in registry._dirty]}


class PublishFramesTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_messages, st.integers(300, 6000), st.integers(1000, 20000), st.integers(1, 5),
           st.sampled_from([1, 65530, 2**32 - 3]), st.integers(0, 4))
    def test_same_state_as_publish(self, messages: list[tuple[Any, Any, Any]],
                                   history: int, memory: int, last_values: int,
                                   first_seq: int, broken_at: int) -> None:
        """Two registries with small bounds (so that logs drop, memory evicts
        and last values are cut) and seqs near 65,536 and 2**32: one fed by
        publish per message, the other by publish_frames over the same
        payloads (one of them undecodable): identical states and refusals."""
        registries = []
        for _ in range(2):
            registry = ChannelRegistry(history_bytes=history, history_memory=memory,
                                       last_values_limit=last_values)
            for name in ("a", "b"):
                registry.publish(name, "k", 0)
                registry.channel(name).next_seq = first_seq
            registries.append(registry)
        payloads = [codec.encode([codec.PUBLISH, *message]) for message in messages]
        payloads.insert(min(broken_at, len(payloads)), b"\x94\x05\xc1")
        by_one: list[Any] = []
        for payload in payloads:
            try:
                message = codec.decode(payload)
            except LTtxError:
                by_one.append(("undecodable", payload))
                continue
            try:
                registries[0].publish(message[1], message[2], message[3], payload[2:])
            except LTtxError as e:
                by_one.append(("refused", e.code, e.message))
        by_run: list[Any] = []
        publish_frames(registries[1], payloads,
                       lambda payload: by_run.append(("undecodable", payload)),
                       lambda e: by_run.append(("refused", e.code, e.message)))
        self.assertEqual(by_run, by_one)
        self.assertEqual(state(registries[1]), state(registries[0]))

    def test_an_engine_registry_gets_each_message_through_its_own_publish(self) -> None:
        """A registry subclass with its own publish (the Redis engine's) is
        called for every message, with the payload's tail."""
        calls: list[Any] = []

        class Engine(ChannelRegistry):
            def publish(self, channel: Any, key: Any, data: Any,
                        encoded: Any = None) -> int:
                calls.append((channel, key, data, encoded))
                return 0

        registry = Engine()
        payload = codec.encode([codec.PUBLISH, "a", "k", 1])
        publish_frames(registry, [payload, payload], calls.append, calls.append)
        self.assertEqual(calls, [("a", "k", 1, payload[2:])] * 2)
