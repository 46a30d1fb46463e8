"""
The ``status`` request: the factory's report, its sources, the rate meter.
"""

from __future__ import annotations

import os
import re
from typing import Any
from unittest import SkipTest

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx import __version__
from lttx.wire import codec
from lttx.state.auth import TokenAuthenticator
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.store import MemoryStore

from ..common import TOKEN, frame, frames_of, server_protocol


class FakeSource:
    """A component with a status(): counts how often it was asked."""

    def __init__(self, report: Any) -> None:
        self.report = report
        self.asked = 0

    def status(self) -> Any:
        self.asked += 1
        return self.report


def make_factory(clock: Clock, **sources: Any) -> LTtxFactory:
    return LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN), clock=clock,
                       status_sources=sources))


class StatusDocumentationTests(SynchronousTestCase):
    """docs/protocol.md shows the status frames as they are on the wire."""

    def test_example_frames(self) -> None:
        """The hex lines of the status section are the request and reply they name."""
        docs = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs", "protocol.md")
        if not os.path.exists(docs):
            raise SkipTest("docs/ is not installed beside the tests")
        with open(docs, encoding="utf-8") as f:
            section = f.read().split("\n## status\n", 1)[1]
        lines = re.findall(r"^((?:[0-9a-f]{2} )+[0-9a-f]{2})$", section, re.M)[:2]
        self.assertEqual([bytes.fromhex(line) for line in lines], [
            frame([codec.REQUEST, 9, "status", []]),
            frame([codec.REPLY, 9, {"version": "0.1.0", "uptime": 3600.5, "connections": 2,
                                    "variables": 1}])])


class StatusRequestTests(SynchronousTestCase):
    """``status`` through the server protocol, frame by frame."""

    def test_status_reply_frame(self) -> None:
        """The reply holds version, uptime from the clock, connections, variables,
        the channels, the watchers and each source's report under its name."""
        clock = Clock()
        clock.advance(1000)
        journal = FakeSource({"bytes": 4096})
        files = FakeSource({"count": 2, "bytes": 10})
        factory = make_factory(clock, journal=journal, files=files)
        factory.state.store.put("a", 1)
        factory.state.store.put("b", [1])
        proto, transport = server_protocol(factory=factory)
        server_protocol(factory=factory)  # a second client
        clock.advance(90.5)
        proto.dataReceived(frame([codec.REQUEST, 7, "status", []]))
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 7, {
            "version": __version__, "uptime": 90.5, "connections": 2, "variables": 2,
            "hellos": {"failed_hellos": 0, "hellos_refused_waiting": 0, "hosts_slowed_down": 0},
            "channels": factory.state.channels.status(),
            "buffers": {"held": 0, "limit": 512 * 1024 * 1024, "frames_refused": 0,
                        "replies_refused": 0},
            "watch": factory.state.channels.changes.status(),
            "journal": {"bytes": 4096}, "files": {"count": 2, "bytes": 10}}]])
        self.assertEqual((journal.asked, files.asked), (1, 1))

    def test_no_clock_no_uptime(self) -> None:
        """A factory built without a clock reports no uptime rather than a made-up one."""
        proto, transport = server_protocol()
        proto.dataReceived(frame([codec.REQUEST, 1, "status", []]))
        [[_, _, report]] = frames_of(transport.value())
        self.assertIsNone(report["uptime"])
        self.assertEqual(report["connections"], 1)

    def test_status_takes_no_arguments(self) -> None:
        """An argument is a bad_request error frame; the connection goes on."""
        proto, transport = server_protocol()
        proto.dataReceived(frame([codec.REQUEST, 3, "status", [1]]))
        self.assertEqual(frames_of(transport.value()), [
            [codec.ERROR, 3, "bad_request", "status takes 0 arguments, not 1"]])
        transport.clear()
        proto.dataReceived(frame([codec.REQUEST, 4, "ping", []]))
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 4, "pong"]])

    def test_source_answering_later(self) -> None:
        """A source answering with a Deferred delays the reply until it fires."""
        d: Deferred[Any] = Deferred()
        factory = make_factory(Clock(), engine=FakeSource(d))
        proto, transport = server_protocol(factory=factory)
        proto.dataReceived(frame([codec.REQUEST, 1, "status", []]))
        self.assertEqual(transport.value(), b"")
        d.callback({"keys": 5})
        [reply] = frames_of(transport.value())
        self.assertEqual(reply[2]["engine"], {"keys": 5})

    def test_failing_source_is_a_server_error(self) -> None:
        """A source that fails gives an internal error frame, logged once."""
        d: Deferred[Any] = Deferred()
        factory = make_factory(Clock(), engine=FakeSource(d))
        proto, transport = server_protocol(factory=factory)
        proto.dataReceived(frame([codec.REQUEST, 1, "status", []]))
        d.errback(RuntimeError("engine down"))
        self.assertEqual(frames_of(transport.value()), [
            [codec.ERROR, 1, "internal", "status failed in the daemon"]])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_source_names_cannot_hide_own_figures(self) -> None:
        """A source named like one of the daemon's own figures is refused at wiring."""
        self.assertRaises(ValueError, make_factory, Clock(), uptime=FakeSource({}))

    def test_sources_are_asked_only_on_request(self) -> None:
        """Connections and variable changes never call a source's status()."""
        source = FakeSource({})
        factory = make_factory(Clock(), channels=source)
        proto, _ = server_protocol(factory=factory)
        for i in range(100):
            proto.dataReceived(frame([codec.REQUEST, i, "put", ["x", i]]))
        self.assertEqual(source.asked, 0)
