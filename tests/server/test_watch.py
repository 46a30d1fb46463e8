"""
The watch requests on a server protocol, frame by frame: the reply, the
change frames (exact bytes), patterns and rights filtering, a reply written
after the connection's own watched change even when the reader is paused,
and the missed notice of a resumption from another epoch.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.auth import Grant, TokenAuthenticator
from lttx.state.store import MemoryStore
from lttx.wire import codec

from ..common import TOKEN, frame, frames_of, server_protocol


def watch_reply(factory: LTtxFactory) -> dict:
    log = factory.state.channels.changes
    return {"epoch": log.epoch, "next": log.next_seq, "from": log.next_seq}


class WatchFrameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN)))
        self.proto, self.transport = server_protocol(factory=self.factory)

    def request(self, request_id: int, command: str, *args: object) -> list:
        self.transport.clear()
        self.proto.dataReceived(frame([codec.REQUEST, request_id, command, list(args)]))
        return frames_of(self.transport.value())

    def test_change_frame_bytes(self) -> None:
        """A watched put is the MESSAGE frame [3, nil, name, [op, args, revision],
        seq], written before the reply of the put that made it."""
        epoch = self.factory.state.channels.changes.epoch
        self.assertEqual(self.request(1, "watch", ["pos_*"]),
                         [[codec.REPLY, 1, {"epoch": epoch, "next": 1, "from": 1}]])
        self.transport.clear()
        self.proto.dataReceived(frame([codec.REQUEST, 2, "put", ["pos_A", 5]]))
        self.assertEqual(
            self.transport.value(),
            bytes.fromhex("00000012" "9503c0a5706f735f4193a3707574910501" "01")
            + bytes.fromhex("00000004" "930102c0"))

    def test_only_matching_names(self) -> None:
        """Changes of names matching none of the patterns are skipped; two
        watch requests add their patterns; unwatch removes one."""
        self.request(1, "watch", "a*")
        self.request(2, "watch", ["b"])
        frames = self.request(3, "incr", "ax", 2) + self.request(4, "incr", "c", 1) \
            + self.request(5, "incr", "b", 1)
        self.assertEqual([f for f in frames if f[0] == codec.MESSAGE],
                         [[3, None, "ax", ["incr", [2], 1], 1],
                          [3, None, "b", ["incr", [1], 3], 3]])
        self.assertEqual(self.request(6, "unwatch", ["a*"]), [[codec.REPLY, 6, ["b"]]])
        self.assertEqual(self.request(7, "incr", "ax"), [[codec.REPLY, 7, 3]])

    def test_changes_of_other_connections(self) -> None:
        """A change made on another connection is written to the watcher once
        the other connection's chunk is done."""
        self.request(1, "watch", "*")
        other, _ = server_protocol(factory=self.factory)
        self.transport.clear()
        other.dataReceived(frame([codec.REQUEST, 1, "dict_change", ["d", "k", [1, 2]]]))
        self.assertEqual(frames_of(self.transport.value()),
                         [[3, None, "d", ["dict_change", ["k", [1, 2]], 1], 1]])

    def test_rights(self) -> None:
        """A token reading only pos_* watching * is sent only pos_* changes."""
        auth = TokenAuthenticator.from_roles([
            ("admin", Grant.everything()), ("reader", Grant.parse("reader", ["read:pos_*"]))])
        factory = LTtxFactory(ServerState(MemoryStore(), auth))
        reader, transport = server_protocol(token="reader", factory=factory)
        admin, _ = server_protocol(token="admin", factory=factory)
        reader.dataReceived(frame([codec.REQUEST, 1, "watch", ["*"]]))
        transport.clear()
        for i, name in enumerate(["secret", "pos_A"]):
            admin.dataReceived(frame([codec.REQUEST, i, "put", [name, 1]]))
        self.assertEqual(frames_of(transport.value()),
                         [[3, None, "pos_A", ["put", [1], 2], 2]])

    def test_reply_held_while_paused(self) -> None:
        """While the transport pauses the reader, the reply of a watched change
        waits behind the change; both are written, in order, on resumption."""
        self.request(1, "watch", "*")
        self.transport.clear()
        reader = self.proto.reader
        reader.pauseProducing()
        self.proto.paused = False  # the request was read before the pause
        self.proto.dataReceived(frame([codec.REQUEST, 2, "put", ["a", 1]]))
        self.assertEqual(self.transport.value(), b"")
        reader.resumeProducing()
        self.assertEqual(frames_of(self.transport.value()),
                         [[3, None, "a", ["put", [1], 1], 1], [codec.REPLY, 2, None]])

    def test_resume_from_another_epoch(self) -> None:
        """A resume point of another epoch gets a missed notice, then the reply."""
        epoch = self.factory.state.channels.changes.epoch
        frames = self.request(1, "watch", ["*"], {"resume": [epoch + 1, 41]})
        self.assertEqual(frames, [
            [codec.NOTICE, "missed", "the daemon's change log was made again (the daemon "
             "restarted): changes made meanwhile are not known",
             {"first": 42, "last": None, "epoch": epoch, "previous_epoch": epoch + 1,
              "from": 1}],
            [codec.REPLY, 1, {"epoch": epoch, "next": 1, "from": 1}]])

    def test_missed_when_dropped(self) -> None:
        """Changes dropped from a tiny log before the watcher read them are a
        missed notice with their seqs, then the retained ones follow."""
        from lttx.state.channels import ChannelRegistry
        factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN),
                                          channels=ChannelRegistry(history_bytes=300)))
        proto, transport = server_protocol(factory=factory)
        proto.dataReceived(frame([codec.REQUEST, 1, "watch", ["*"]]))
        proto.reader.pauseProducing()
        proto.paused = False
        writer, _ = server_protocol(factory=factory)
        transport.clear()
        for i in range(10):
            writer.dataReceived(frame([codec.REQUEST, i, "put", ["v", i]]))
        proto.reader.resumeProducing()
        frames = frames_of(transport.value())
        self.assertEqual(frames[0][:2], [codec.NOTICE, "missed"])
        first_kept = frames[1][4]
        self.assertEqual(frames[0][3]["first"], 1)
        self.assertEqual(frames[0][3]["last"], first_kept - 1)
        self.assertEqual([f[4] for f in frames[1:]], list(range(first_kept, 11)))

    def test_bad_patterns(self) -> None:
        """A pattern that is not a str, or empty, is a bad_request."""
        for bad in ([], [""], [1], {"a": 1}):
            [reply] = self.request(1, "watch", bad)
            self.assertEqual(reply[:3], [codec.ERROR, 1, "bad_request"])

    def test_status_counts_watchers(self) -> None:
        """status shows the change log's watchers."""
        self.request(1, "watch", "*")
        [[_, _, report]] = self.request(2, "status")
        self.assertEqual(report["watch"]["watchers"], 1)


class DocumentedFramesTests(SynchronousTestCase):
    """The hex examples of docs/protocol.md, "Watch and mirror", are what the
    codec and the change log write."""

    def test_examples(self) -> None:
        import os
        import re

        from lttx.state.changelog import ChangeLog, missed_notice

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "docs", "protocol.md"), encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("## Watch and mirror"):text.index("\n## status")]
        blocks = [bytes.fromhex(line.replace(" ", ""))
                  for block in re.findall(r"```\n(.*?)```", section, re.S)
                  for line in block.splitlines() if re.fullmatch(r"[0-9a-f ]+", line)]
        epoch = 2246800662264969608
        log = ChangeLog(1 << 20, epoch=epoch)
        log.next_seq = log._base = 8
        log.record("pos_A", "dict_change", ("qty", 200), 12)
        self.assertEqual(blocks, [
            frame([codec.REQUEST, 14, "watch", [["pos_*"]]]),
            frame([codec.REPLY, 14, {"epoch": epoch, "next": 8, "from": 8}]),
            frame([codec.REQUEST, 15, "watch", [["pos_*", "cfg"], {"resume": [epoch, 41]}]]),
            log.frame_of(8),
            missed_notice(42, 99, epoch, "changes 42 to 99 were dropped from the daemon's "
                          "change log before this watcher read them"),
            frame([codec.REQUEST, 16, "unwatch", [["cfg"]]]),
            frame([codec.REPLY, 16, ["pos_*"]]),
        ])
