"""
Several real daemons (``--engine redis``) on one real redis-server.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from ..common import TOKEN, Daemon
from ..redis_server import RedisServer, free_port


def redis_daemon(testcase: TestCase, redis: RedisServer, *args: str) -> Daemon:
    daemon = Daemon(testcase, "--engine", "redis", "--redis", redis.url, *args)
    daemon.wait_for_log(r"redis: connected to Redis at")
    daemon.wait_for_log(r"redis streams: connected to Redis at")
    return daemon


class TwoDaemonsTests(TestCase):
    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a = redis_daemon(self, self.redis)
        self.b = redis_daemon(self, self.redis)

    def test_written_on_one_read_on_the_other(self) -> None:
        ca, cb = self.a.connect(), self.b.connect()
        ca.put("pos", {"IF2412": 3, "IC2412": [1, 2.5, None]})
        self.assertEqual(cb.get("pos"), {"IF2412": 3, "IC2412": [1, 2.5, None]})
        cb.dict_change("pos", "IH2412", -1)
        self.assertEqual(ca.get_dict_value("pos", "IH2412"), -1)
        self.assertEqual(sorted(ca.keys("*")), ["pos"])
        self.assertTrue(cb.delete("pos"))
        self.assertFalse(ca.exists("pos"))
        with self.assertRaises(lttx.NotFound):
            cb.list_pop("pos")

    def test_in_place_operations_at_once(self) -> None:
        """Appends, removes and dict changes through two daemons at once leave what
        they leave through one; pops at both ends through both take each item once."""
        ca, cb = self.a.connect(), self.b.connect()
        n = 200

        def work(client: Any, tag: str, suffix: str) -> None:
            for i in range(n):
                client.list_append("orders" + suffix, f"{tag}{i}")
                client.dict_change("fills" + suffix, f"{tag}{i}", [i, 1.0])
                if i % 3 == 0:
                    client.list_remove("orders" + suffix, f"{tag}{i}")

        def both(target: Any, *args: Any) -> None:
            threads = [threading.Thread(target=target, args=(c, *args)) for c in (ca, cb)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

        # Through one daemon, one after the other ...
        work(ca, "a", "1")
        work(ca, "b", "1")
        # ... and through two at once (each writer with its own items).
        threads = [threading.Thread(target=work, args=(c, t, "2"))
                   for c, t in ((ca, "a"), (cb, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        one, two = ca.get("orders1"), cb.get("orders2")
        self.assertEqual(sorted(two), sorted(one))
        for tag in "ab":  # each writer's items stay in its own order
            mine = [int(x[1:]) for x in two if x[0] == tag]
            self.assertEqual(mine, [i for i in range(n) if i % 3])
        self.assertEqual(ca.get("fills2"), cb.get("fills1"))

        popped: list[Any] = []

        def pop_all(client: Any) -> None:
            for i in range(len(two)):
                try:
                    popped.append(client.list_pop("orders2", -(i % 2)))
                except lttx.IndexOutOfRange:  # the other daemon took the last one
                    return

        both(pop_all)
        self.assertEqual(sorted(popped), sorted(two))
        self.assertEqual(ca.get("orders2"), [])

    def test_push_on_a_reaches_b_and_c_in_order(self) -> None:
        """5,000 pushes on A reach the subscribers of B and C complete, in order,
        numbered 1, 2, 3... by the channel's stream: the same on both."""
        c = redis_daemon(self, self.redis)
        subscribers = []
        for daemon in (self.b, c):
            client = daemon.connect()
            client.subscribe("hq")  # nothing published after its reply is missed
            subscribers.append(client)
        publisher = self.a.connect()
        count = 5000
        for i in range(count):
            publisher.push(f"k{i % 7}", i, "hq")
        publisher.flush()
        for client in subscribers:
            got = [client.Q.get(timeout=15) for _ in range(count)]
            self.assertEqual([m.data for m in got], list(range(count)))
            self.assertEqual([m.seq for m in got], list(range(1, count + 1)))
            self.assertEqual(got[8], lttx.Message("hq", "k1", 8, 9))
            self.assertTrue(client.Q.empty())


class RedisRestartTests(TestCase):
    def test_typed_errors_while_down_full_service_after(self) -> None:
        """Redis stopped: calls fail at once with Unavailable; Redis back: variables and
        channels across daemons work again, without touching the daemons."""
        redis = RedisServer(self)
        a, b = redis_daemon(self, redis), redis_daemon(self, redis)
        ca, cb = a.connect(), b.connect()
        cb.subscribe("hq")
        ca.put("x", 1)
        marks = (len(a.lines), len(b.lines))
        redis.stop()
        a.wait_for_log(r"redis: lost the connection to Redis", start=marks[0])
        for call in (lambda: ca.get("x"), lambda: ca.put("x", 2),
                     lambda: ca.list_append("l", 1), lambda: cb.keys("*")):
            with self.assertRaises(lttx.Unavailable):
                call()
        a.wait_for_log(r"Redis .* is unavailable; failing calls", start=marks[0])
        redis.start()
        for daemon, mark in zip((a, b), marks):
            daemon.wait_for_log(r"redis: connected to Redis", start=mark)
        b.wait_for_log(r"redis streams: connected to Redis", start=marks[1])
        ca.put("x", 3)  # the data went with the old server (no persistence)
        self.assertEqual(cb.get("x"), 3)
        ca.push("k", "after", "hq")
        self.assertEqual(cb.Q.get(timeout=10).data, "after")
        # The stream went with the old server too: a gap, not silence.
        self.assertEqual(cb.gaps_by_channel, {"hq": 1})


class FailoverTests(TestCase):
    def test_killed_daemon_moves_client_to_another(self) -> None:
        """A client on A and B: A killed, the client goes on through B and is
        subscribed there again from where it was (the channel's stream is shared:
        no gap, no repeat); pushes from C reach it."""
        redis = RedisServer(self)
        a, b, c = (redis_daemon(self, redis) for _ in range(3))
        client = lttx.connect([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                              token=a.token, timeout=15)
        self.addCleanup(client.close)
        client.put("x", 1)
        client.subscribe("hq")
        early = c.connect()
        early.push("k", "before", "hq")
        self.assertEqual(client.Q.get(timeout=10).seq, 1)
        mark = len(b.lines)
        a.kill()
        self.assertEqual(client.get("x"), 1)  # waits for the reconnection, to B
        b.wait_for_log(r"subscribed to hq \(resume\)", start=mark)
        publisher = c.connect()
        publisher.push("k", "after failover", "hq")
        message = client.Q.get(timeout=10)
        self.assertEqual((message.data, message.seq), ("after failover", 2))
        self.assertEqual(client.gaps_by_channel, {})

    def test_first_reachable_address(self) -> None:
        """connect() with a list skips the daemons it cannot reach."""
        redis = RedisServer(self)
        a = redis_daemon(self, redis)
        client = lttx.connect([f"127.0.0.1:{free_port()}", ("127.0.0.1", a.port)],
                              token=TOKEN, timeout=5)
        self.addCleanup(client.close)
        self.assertEqual(client.ping(), "pong")


class SentinelTests(TestCase):
    def test_master_killed_daemons_follow_the_promoted_replica(self) -> None:
        """One master, one replica, three sentinels: the master is killed, Sentinel
        promotes the replica, the daemons follow it.  Prints how long writes failed
        and how many acknowledged writes the promotion lost."""
        master = RedisServer(self)
        replica = RedisServer(self, "--replicaof", "127.0.0.1", str(master.port))
        replica.wait_for_log(r"MASTER <-> REPLICA sync: Finished with success")
        sentinels = [RedisServer(self, sentinel_of=("lttx", master.port)) for _ in range(3)]
        for sentinel in sentinels:
            sentinel.wait_for_log(r"\+slave slave 127\.0\.0\.1:%d" % replica.port)
            sentinel.wait_for_log(r"\+sentinel sentinel", count=2)  # it knows the other two
        where = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        daemons = [Daemon(self, "--engine", "redis", "--redis-sentinel", where,
                          "--redis-master", "lttx") for _ in range(2)]
        for daemon in daemons:
            daemon.wait_for_log(r"redis: connected to Redis at 127\.0\.0\.1:%d \(master\)"
                                % master.port)
        writer, reader = daemons[0].connect(), daemons[1].connect()
        reader.subscribe("hq")
        for n in range(100):  # in the stream, and on the replica, before the kill
            writer.push("k", n, "hq")
        self.assertEqual(writer.publish("k", 100, "hq"), 101)

        acknowledged: list[int] = []
        failures: list[str] = []
        last_ok_before = first_ok_after = killed_at = 0.0
        i = mark = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if len(acknowledged) == 300 and not killed_at:
                mark = len(daemons[1].lines)
                last_ok_before = time.monotonic()
                master.kill()
                killed_at = time.monotonic()
            i += 1
            try:
                writer.list_append("acks", i)
            except lttx.Unavailable as e:
                failures.append(e.message)
                continue
            acknowledged.append(i)
            if killed_at and not first_ok_after:
                first_ok_after = time.monotonic()
            if first_ok_after and len(acknowledged) >= 600:
                break
        self.assertTrue(first_ok_after, f"no write succeeded after the failover: {failures[-3:]}")
        for daemon in daemons:
            daemon.wait_for_log(r"redis: connected to Redis at 127\.0\.0\.1:%d \(master\)"
                                % replica.port)
        kept = set(reader.get("acks"))
        lost = [n for n in acknowledged if n not in kept]
        print(f"\nsentinel failover: writes failed for {first_ok_after - last_ok_before:.2f} s "
              f"({len(failures)} Unavailable replies); acknowledged writes lost: {len(lost)} "
              f"of {len(acknowledged)} {lost[:10]}")
        self.assertTrue(all(f.startswith(("Redis", "the connection to Redis")) for f in failures),
                        failures[:3])
        # Channels follow too: the stream connections went to the new master.
        daemons[1].wait_for_log(r"redis streams: connected to Redis at 127\.0\.0\.1:%d"
                                % replica.port, start=mark)
        writer.push("k", "after failover", "hq")
        got = [reader.Q.get(timeout=10) for _ in range(102)]
        self.assertEqual([m.data for m in got], [*range(101), "after failover"])
        # The stream reached the replica: one epoch, the seqs go on.  (Had the
        # replica lacked entries the daemons delivered, a new epoch and a gap
        # notice: tests/engines/test_redis_streams.py, test_tail_lost_new_epoch.)
        self.assertEqual([m.seq for m in got], list(range(1, 103)))
        self.assertEqual(reader.gaps, 0)


class DirectoryTests(TestCase):
    def test_daemons_know_each_other(self) -> None:
        """Each daemon says in Redis where it listens; the others list it."""
        redis = RedisServer(self)
        a, b = redis_daemon(self, redis), redis_daemon(self, redis)
        both = sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        for daemon in (a, b):
            line = daemon.wait_for_log(r"daemons on this Redis: [\d.:]+, [\d.:]+$", timeout=10)
            self.assertEqual(sorted(line.split("daemons on this Redis: ")[1].split(", ")), both)
        # `lttx status` shows the engine, the Redis, its role and the daemons.
        engine = a.connect().status()["engine"]
        self.assertEqual((engine["engine"], engine["server"], engine["role"]),
                         ("redis", f"127.0.0.1:{redis.port}", "master"))
        self.assertEqual(sorted(d["listening"][0] for d in engine["daemons"].values()), both)


class PasswordTests(TestCase):
    def test_password_file(self) -> None:
        """The password from --redis-password-file; a wrong one is logged and
        every call is Unavailable."""
        redis = RedisServer(self, "--requirepass", "s3cret")
        right, wrong = self.mktemp(), self.mktemp()
        for path, text in ((right, "s3cret\n"), (wrong, "nope\n")):
            with open(path, "w") as f:
                f.write(text)
        good = redis_daemon(self, redis, "--redis-password-file", right)
        client = good.connect()
        client.put("x", [1])
        self.assertEqual(client.get("x"), [1])
        bad = Daemon(self, "--engine", "redis", "--redis", redis.url,
                     "--redis-password-file", wrong)
        bad.wait_for_log(r"Redis refused the connection set-up: WRONGPASS")
        with self.assertRaises(lttx.Unavailable):
            bad.connect().get("x")
