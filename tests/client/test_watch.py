"""
Watch and mirror (lttx.client.watch, lttx.client.mirror) against an in-memory
daemon: every change in order, across a reconnection; missed changes told;
mirrors loaded, kept in sync, reloaded; read-your-writes; rights.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.state.auth import Grant, TokenAuthenticator
from lttx.state.channels import ChannelRegistry
from lttx.testing import MemoryDaemon


def result(daemon: MemoryDaemon, d: Any) -> Any:
    """The result of a Deferred once the daemon's connections are pumped."""
    daemon.flush()
    out: list[Any] = []
    d.addBoth(out.append)
    daemon.flush()
    if not out:
        raise AssertionError("the Deferred did not fire")
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def drain(watch: lttx.Watch) -> list[Any]:
    """What a watch holds now: Changes, and MissedChanges in their place."""
    out: list[Any] = []
    while watch.qsize():
        try:
            out.append(watch.get(timeout=0))
        except lttx.MissedChanges as e:
            out.append(e)
    return out


class WatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.daemon = MemoryDaemon()
        self.addCleanup(self.daemon.close)

    def test_every_change_in_order(self) -> None:
        """Each applied change of a matching name arrives as a Change with its
        op, its arguments after the name and its revision, in order."""
        c = self.daemon.connect()
        w = result(self.daemon, c.watch("pos_*"))
        for d in [c.put("pos_A", {"qty": 1}), c.dict_change("pos_A", "qty", 2),
                  c.put("other", 1), c.incr("pos_n", 5), c.list_append("pos_l", "x"),
                  c.list_pop("pos_l", 0), c.delete("pos_A")]:
            result(self.daemon, d)
        self.assertEqual(drain(w), [
            lttx.Change("pos_A", "put", ({"qty": 1},), 1),
            lttx.Change("pos_A", "dict_change", ("qty", 2), 2),
            lttx.Change("pos_n", "incr", (5,), 4),
            lttx.Change("pos_l", "list_append", ("x",), 5),
            lttx.Change("pos_l", "list_pop", (0,), 6),
            lttx.Change("pos_A", "delete", (), 3),
        ])

    def test_changes_of_other_clients(self) -> None:
        """A watcher sees the changes another client makes."""
        watcher, writer = self.daemon.connect(), self.daemon.connect()
        seen: list[lttx.Change] = []
        result(self.daemon, watcher.watch("cfg", callback=seen.append))
        result(self.daemon, writer.put("cfg", 1))
        result(self.daemon, writer.put("cfg", 2))
        self.assertEqual([(c.args, c.revision) for c in seen], [((1,), 1), ((2,), 2)])

    def test_across_a_reconnection(self) -> None:
        """The daemon drops the watcher's connection while another client keeps
        changing: after the reconnection the watcher gets every change it had
        not received, in order, none twice, with consecutive revisions."""
        watcher, writer = self.daemon.connect(), self.daemon.connect()
        w = result(self.daemon, watcher.watch("x*"))
        result(self.daemon, writer.put("x1", 0))
        self.daemon.drop_connections()
        store = self.daemon.state.store
        for i in range(1, 6):  # changes made while the watcher is away
            store.put("x1", i)
            store.put("y", i)
        self.daemon.clock.advance(5)
        self.daemon.flush()
        for i in range(6, 9):
            result(self.daemon, writer.put("x1", i))
        changes = drain(w)
        self.assertEqual([c.args[0] for c in changes], list(range(9)))
        self.assertEqual([c.revision for c in changes], list(range(1, 10)))

    def test_missed_when_the_log_dropped_them(self) -> None:
        """A watcher whose unread changes were dropped from the daemon's log
        (a tiny --channel-history) is told: get raises MissedChanges in their
        place, then goes on with the retained ones."""
        daemon = MemoryDaemon(channels=ChannelRegistry(history_bytes=400))
        self.addCleanup(daemon.close)
        watcher = daemon.connect()
        w = result(daemon, watcher.watch("*"))
        daemon.drop_connections()
        for i in range(30):
            daemon.state.store.put("v", "x" * 20 + str(i))
        daemon.clock.advance(5)
        daemon.flush()
        got = drain(w)
        self.assertIsInstance(got[0], lttx.MissedChanges)
        self.assertEqual(got[0].first, 1)
        self.assertTrue(all(isinstance(c, lttx.Change) for c in got[1:]))
        self.assertEqual(got[-1].args, ("x" * 20 + "29",))
        revisions = [c.revision for c in got[1:]]
        self.assertEqual(revisions, list(range(revisions[0], 31)))

    def test_missed_after_a_restart(self) -> None:
        """A watcher resuming on a daemon with another change log (it restarted)
        is told it missed changes: a callback watch gets op "missed"."""
        watcher = self.daemon.connect()
        seen: list[lttx.Change] = []
        result(self.daemon, watcher.watch("*", callback=seen.append))
        result(self.daemon, watcher.put("a", 1))
        self.daemon.state.channels.changes.epoch += 1  # the log made again
        self.daemon.drop_connections()
        self.daemon.clock.advance(5)
        self.daemon.flush()
        result(self.daemon, watcher.put("a", 2))
        self.assertEqual([c.op for c in seen], ["put", "missed", "put"])
        self.assertEqual(seen[1].name, "*")

    def test_unwatch(self) -> None:
        """After unwatch no change of the pattern arrives."""
        c = self.daemon.connect()
        w = result(self.daemon, c.watch("a"))
        self.assertEqual(result(self.daemon, c.unwatch("a")), [])
        result(self.daemon, c.put("a", 1))
        self.assertEqual(drain(w), [])

    def test_rights(self) -> None:
        """A token that may read only pos_* watching * sees only the pos_*
        changes; a mirror of * holds only those names."""
        self.daemon.state.auth = TokenAuthenticator.from_roles([
            ("admin-token", Grant.everything()),
            ("reader-token", Grant.parse("reader", ["read:pos_*"]))])
        admin = self.daemon.connect(token="admin-token")
        reader = self.daemon.connect(token="reader-token")
        result(self.daemon, admin.put("secret", 1))
        w = result(self.daemon, reader.watch("*"))
        m = result(self.daemon, reader.mirror("*"))
        for name in ["pos_A", "secret", "pos_B"]:
            result(self.daemon, admin.put(name, 2))
        self.assertEqual([c.name for c in drain(w)], ["pos_A", "pos_B"])
        self.assertEqual(dict(m), {"pos_A": 2, "pos_B": 2})


class MirrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.daemon = MemoryDaemon()
        self.addCleanup(self.daemon.close)

    def test_loaded_then_kept_in_sync(self) -> None:
        """A mirror holds every matching variable at once, then every change."""
        writer, reader = self.daemon.connect(), self.daemon.connect()
        result(self.daemon, writer.put("pos_A", {"qty": 1}))
        result(self.daemon, writer.put("pos_B", [1]))
        result(self.daemon, writer.put("cfg", 0))
        m = result(self.daemon, reader.mirror("pos_*"))
        self.assertEqual(dict(m), {"pos_A": {"qty": 1}, "pos_B": [1]})
        before = m["pos_A"]
        for d in [writer.dict_change("pos_A", "px", 9.5), writer.list_append("pos_B", 2),
                  writer.list_remove("pos_B", 1), writer.incr("pos_n", 2),
                  writer.delete("pos_A"), writer.put("cfg", 1)]:
            result(self.daemon, d)
        self.assertEqual(dict(m), {"pos_B": [2], "pos_n": 2})
        self.assertEqual(before, {"qty": 1})  # values are replaced, never changed in place
        self.assertEqual(m.revision("pos_B"), result(self.daemon, writer.get(
            "pos_B", revision=True))[1])

    def test_read_your_writes(self) -> None:
        """Once a change made by the mirror's own client returns, the mirror shows it."""
        c = self.daemon.connect()
        m = result(self.daemon, c.mirror("*"))
        seen = []

        def check(_: Any) -> None:
            seen.append(m.get("k"))

        d = c.put("k", 41).addCallback(check)
        self.daemon.flush()
        d2 = c.incr("k", 1).addCallback(check)
        self.daemon.flush()
        self.assertEqual(seen, [41, 42])
        self.assertTrue(d.called and d2.called)

    def test_reloads_after_missed_changes(self) -> None:
        """A mirror told it missed changes reloads itself and equals the daemon."""
        daemon = MemoryDaemon(channels=ChannelRegistry(history_bytes=400))
        self.addCleanup(daemon.close)
        reader = daemon.connect()
        m = result(daemon, reader.mirror("v*"))
        daemon.drop_connections()
        for i in range(30):
            daemon.state.store.put(f"v{i % 3}", "x" * 20 + str(i))
        daemon.clock.advance(5)
        daemon.flush()
        self.assertEqual(m.reloads, 1)
        self.assertEqual(dict(m), {f"v{i}": "x" * 20 + str(27 + i) for i in range(3)})

    def test_reloads_after_a_restart(self) -> None:
        """A mirror resuming on a daemon whose change log is new (it restarted,
        its variables changed meanwhile) reloads and equals the daemon again."""
        c = self.daemon.connect()
        result(self.daemon, c.put("a", 1))
        m = result(self.daemon, c.mirror("*"))
        missed: list[Any] = []
        result(self.daemon, c.watch("*", on_missed=lambda first, last: missed.append(last)))
        self.daemon.drop_connections()
        self.daemon.state.channels.changes.epoch += 1  # the log made again
        self.daemon.state.store.put("a", 2)  # changed while nobody could be told
        self.daemon.state.store.put("b", 3)
        self.daemon.clock.advance(5)
        self.daemon.flush()
        self.assertEqual((m.reloads, dict(m)), (1, {"a": 2, "b": 3}))
        self.assertEqual(missed, [None])

    def test_close(self) -> None:
        """A closed mirror stops changing; its pattern is no longer watched."""
        c = self.daemon.connect()
        m = result(self.daemon, c.mirror("x"))
        result(self.daemon, m.close())
        result(self.daemon, c.put("x", 1))
        self.assertEqual(dict(m), {})
        self.assertIsNone(self.daemon.state.channels.changes.readers.get(
            next(iter(self.daemon.state.connections)).reader))
