"""
Watch and mirror against the real daemon (``twistd -n lttx``) with blocking
clients: a mirror equals a fresh ``get`` of every name after random
concurrent changes from two other clients; a watch told it missed changes
when the daemon restarts; callbacks in the callback thread.
"""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from .common import Daemon
from .test_channel_log_integration import Proxy

NAMES = [f"k{i}" for i in range(8)]


def random_changes(c: lttx.Client, seed: int, count: int) -> None:
    """``count`` random changes of NAMES (refused ones, wrong types, are part of the game)."""
    rng = random.Random(seed)
    for _ in range(count):
        name = rng.choice(NAMES)
        op = rng.randrange(8)
        try:
            if op == 0:
                c.put(name, rng.choice([{"a": 1}, [1, 2], 3, "s", None, 2.5]))
            elif op == 1:
                c.dict_change(name, rng.choice("abc"), rng.randrange(100))
            elif op == 2:
                c.list_append(name, rng.randrange(5))
            elif op == 3:
                c.list_pop(name, rng.choice([0, -1]))
            elif op == 4:
                c.list_remove(name, rng.randrange(5))
            elif op == 5:
                c.incr(name, rng.choice([1, -2, 0.5]))
            elif op == 6:
                c.delete(name)
            else:
                c.put(name, rng.randrange(10), if_revision=c.get(name, revision=True)[1])
        except (lttx.WrongTypeError, lttx.NotFound, lttx.IndexOutOfRange, lttx.Conflict):
            pass  # refused: changes nothing, as the mirror must see


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MirrorIntegrationTests(TestCase):
    timeout = 240

    def test_mirror_equals_fresh_gets_after_concurrent_changes(self) -> None:
        """Two clients change 8 variables at random, concurrently, while a third
        mirrors them: afterwards the mirror equals a get of every name, with
        the same revisions."""
        daemon = Daemon(self)
        with daemon.connect() as c, daemon.connect() as a, daemon.connect() as b:
            c.put("k0", {"start": True})
            m = c.mirror("k*")
            self.assertEqual(dict(m), {"k0": {"start": True}})
            threads = [threading.Thread(target=random_changes, args=(client, seed, 400))
                       for seed, client in [(1, a), (2, b)]]
            for t in threads:
                t.start()
            for t in threads:
                t.join(200)
            # The mirror's own client changes last: once that returns, the
            # mirror has every change the daemon applied before it.
            c.put("k_end", 1)
            fresh = {name: c.get(name, revision=True) for name in c.keys("k*")}
            self.assertEqual(dict(m), {name: value for name, (value, _) in fresh.items()})
            self.assertEqual({name: m.revision(name) for name in m},
                             {name: revision for name, (_, revision) in fresh.items()})
            m.close()

    def test_read_your_writes(self) -> None:
        """Each change a blocking client makes is in its mirror when the call
        returns, while another client changes other names of the pattern."""
        daemon = Daemon(self)
        with daemon.connect() as c, daemon.connect() as other:
            m = c.mirror("r*")
            noise = threading.Thread(target=lambda: [other.put(f"r_other{i % 5}", i)
                                                     for i in range(300)])
            noise.start()
            for i in range(300):
                c.put("r", i)
                self.assertEqual(m["r"], i)
                self.assertEqual(c.incr("r_n"), i + 1)
                self.assertEqual(m["r_n"], i + 1)
            noise.join(60)

    def test_cut_behind_a_proxy_every_change_once(self) -> None:
        """A watcher and a mirror behind a TCP proxy cut twice while another
        client makes 3,000 changes: the watcher ends with every change, in
        order, once, with consecutive revisions, and no missed notice; the
        mirror equals the daemon without a reload."""
        daemon = Daemon(self)
        proxy = Proxy(daemon.port)
        self.addCleanup(proxy.close)
        watcher = lttx.connect("127.0.0.1", proxy.port, token=daemon.token, timeout=15)
        self.addCleanup(watcher.close)
        w = watcher.watch("c")
        m = watcher.mirror("c*")
        got: list[lttx.Change] = []
        with daemon.connect() as writer:
            for batch in range(30):
                for i in range(batch * 100, (batch + 1) * 100):
                    writer.put("c", i)
                    if i % 10 == 0:
                        writer.incr("c_n")
                if batch in (10, 20):
                    while len(got) < batch * 100 - 300:
                        got.append(w.get(timeout=30))
                    proxy.cut()
            while len(got) < 3000:
                got.append(w.get(timeout=30))
            watcher.put("c_end", True)  # read-your-writes: the mirror has everything now
            self.assertEqual([c.args[0] for c in got], list(range(3000)))
            revisions = [c.revision for c in got]
            self.assertEqual(revisions, list(range(revisions[0], revisions[0] + 3000)))
            self.assertEqual(w.missed, 0)
            self.assertEqual(m.reloads, 0)
            self.assertEqual(dict(m), {"c": 2999, "c_n": 300, "c_end": True})
            self.assertEqual(daemon.log_text().count("watches c, c* (resumed)"), 2)

    def test_watch_callback_and_restart(self) -> None:
        """A callback watch gets each change in the callback thread; after the
        daemon restarts, a get-watch raises MissedChanges once, then goes on."""
        port = free_port()
        daemon = Daemon(self, listen=[f"tcp:{port}:interface=127.0.0.1"])
        with daemon.connect() as c:
            seen: list[Any] = []
            done = threading.Event()

            def on_change(change: lttx.Change) -> None:
                seen.append((change, threading.current_thread().name))
                if change.name == "b":
                    done.set()

            c.watch("b", callback=on_change)
            w = c.watch("a*")
            c.put("a1", 1)
            c.put("b", 2)
            self.assertEqual(w.get(timeout=10), lttx.Change("a1", "put", (1,), 1))
            self.assertTrue(done.wait(10))
            self.assertEqual(seen, [(lttx.Change("b", "put", (2,), 2), "lttx-callbacks")])
            daemon.stop()
            Daemon(self, data_dir=daemon.data_dir, listen=daemon.listen)  # the same port
            c.put("a2", 3)  # waits for the reconnection
            with self.assertRaises(lttx.MissedChanges) as missed:
                w.get(timeout=10)
            self.assertIsNone(missed.exception.last)
            change = w.get(timeout=10)
            self.assertEqual((change.name, change.op, change.args), ("a2", "put", (3,)))
