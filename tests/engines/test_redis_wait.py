"""
Acknowledged writes (``--redis-wait N``) with real redis-servers: without a
replica a write is answered Unavailable, with one it succeeds; under repeated
Sentinel failovers and 4 concurrent writers, no acknowledged write is lost.
"""

from __future__ import annotations

import threading

from twisted.trial.unittest import TestCase

import lttx

from ..common import Daemon
from ..redis_server import RedisServer
from .test_redis_integration import redis_daemon


#: A replica's full resynchronisation starts at once (Redis waits 5 s by default).
NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")


def replica_of(testcase: TestCase, master: RedisServer) -> RedisServer:
    replica = RedisServer(testcase, *NO_SYNC_DELAY, "--replicaof", "127.0.0.1",
                          str(master.port))
    replica.wait_for_log(r"MASTER <-> REPLICA sync: Finished with success")
    return replica


class RedisWaitTests(TestCase):
    timeout = 60

    def test_no_replica_the_write_is_unavailable(self) -> None:
        """--redis-wait 1 and no replica: every write and acknowledged publish
        gets Unavailable after the timeout, saying why; reads are answered."""
        redis = RedisServer(self)
        daemon = redis_daemon(self, redis, "--redis-wait", "1", "--redis-wait-timeout", "0.1")
        c = daemon.connect()
        for call in (lambda: c.put("x", 1), lambda: c.incr("n"), lambda: c.delete("x"),
                     lambda: c.publish("k", 1, "hq")):
            with self.assertRaises(lttx.Unavailable) as caught:
                call()
            self.assertIn("only 0 of 1 replicas acknowledged", caught.exception.message)
        self.assertEqual(c.get("x"), None)  # the delete was applied all the same
        self.assertEqual(c.get("n"), 1)
        self.assertFalse(c.delete("x"))  # no change: nothing to confirm
        daemon.wait_for_log(r"only 0 of 1 replicas acknowledged writes within 0.1 s")
        status = c.status()["engine"]["replication_wait"]
        self.assertEqual((status["replicas"], status["refused"], status["confirmed"]),
                         (1, 4, 0))

    def test_with_a_replica_the_write_succeeds(self) -> None:
        """--redis-wait 1 with a replica: writes and publishes succeed, and the
        replica has every acknowledged write."""
        master = RedisServer(self)
        replica = replica_of(self, master)
        daemon = redis_daemon(self, master, "--redis-wait", "1")
        c = daemon.connect()
        c.put("x", {"a": 1})
        for i in range(50):
            c.list_append("l", i)
        self.assertEqual(c.publish("k", 1, "hq"), 1)
        on_replica = Daemon(self, "--engine", "redis", "--redis", replica.url)
        on_replica.wait_for_log(r"redis: connected to Redis at .*\(slave\)")
        r = on_replica.connect()
        self.assertEqual((r.get("x"), r.get("l")), ({"a": 1}, list(range(50))))
        status = c.status()["engine"]["replication_wait"]
        self.assertEqual((status["refused"], status["confirmed"]), (0, 52))
        self.assertEqual(status["last_acknowledged_by"], 1)


class FailoverTests(TestCase):
    timeout = 120

    def test_repeated_failovers_lose_no_acknowledged_write(self) -> None:
        """One master, one replica, three sentinels, two daemons with --redis-wait 1,
        4 writers appending: the master is killed three times (Sentinel promotes
        the replica, the killed one comes back as its replica); every append that
        was acknowledged is in the list at the end.  Prints how many were refused."""
        servers = [RedisServer(self, *NO_SYNC_DELAY)]
        servers.append(replica_of(self, servers[0]))
        sentinels = [RedisServer(self, sentinel_of=("lttx", servers[0].port),
                                 failover_timeout_ms=2000,
                                 down_after_ms=1000) for _ in range(3)]
        for sentinel in sentinels:
            sentinel.wait_for_log(r"\+slave slave 127\.0\.0\.1:%d" % servers[1].port)
            sentinel.wait_for_log(r"\+sentinel sentinel", count=2)
        where = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        daemons = [Daemon(self, "--engine", "redis", "--redis-sentinel", where,
                          "--redis-master", "lttx", "--redis-wait", "1",
                          "--redis-wait-timeout", "0.5") for _ in range(2)]
        for daemon in daemons:
            daemon.wait_for_log(r"redis: connected to Redis at .*\(master\)")
        addresses = [f"127.0.0.1:{d.port}" for d in daemons]

        acknowledged: list[str] = []
        refused: list[str] = []
        errors: list[BaseException] = []
        progress = threading.Condition()
        stop = threading.Event()

        def write(n: int) -> None:
            client = lttx.connect(addresses[n % 2:] + addresses[:n % 2], token=daemons[0].token,
                                  timeout=15)
            try:
                i = 0
                while not stop.is_set():
                    item = f"{n}:{i}"
                    i += 1
                    try:
                        client.list_append("acks", item)
                    except lttx.Unavailable as e:
                        refused.append(e.message)
                        stop.wait(0.05)  # a client's back-off, not a timing
                        continue
                    with progress:
                        acknowledged.append(item)
                        progress.notify_all()
            except BaseException as e:  # reported by the test, not lost in a thread
                errors.append(e)
            finally:
                client.close()

        def more(count: int) -> None:
            with progress:
                target = len(acknowledged) + count
                self.assertTrue(progress.wait_for(
                    lambda: len(acknowledged) >= target or bool(errors), 30),
                    f"writes did not go on: {refused[-3:]}")
            self.assertEqual(errors, [])

        writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for t in writers:
            t.start()
        try:
            master, replica = servers
            for failover in range(3):
                more(100)
                mark = len(daemons[0].lines)
                master.kill()
                for sentinel in sentinels:  # the same switch as two failovers ago
                    sentinel.wait_for_log(r"\+switch-master lttx 127\.0\.0\.1 %d 127\.0\.0\.1 %d"
                                          % (master.port, replica.port), count=failover // 2 + 1)
                # The killed master comes back empty, as the new master's replica.
                master.args = [*NO_SYNC_DELAY, "--replicaof", "127.0.0.1", str(replica.port)]
                master.start()
                master.wait_for_log(r"MASTER <-> REPLICA sync: Finished with success")
                more(100)
                master, replica = replica, master
        except AssertionError:
            for sentinel in sentinels:
                print("SENTINEL", sentinel.port, "\n".join(
                    line for line in sentinel.lines if any(k in line for k in (
                        "down", "switch", "elected", "selected", "promoted", "abort",
                        "try-failover", "+slave"))))
            print("SERVERS", [x.port for x in servers])
            raise
        finally:
            stop.set()
            for t in writers:
                t.join(30)
        self.assertEqual(errors, [])
        daemons[0].wait_for_log(r"redis: connected to Redis at 127\.0\.0\.1:%d \(master\)"
                                % master.port, start=mark)
        reader = daemons[0].connect()
        for attempt in range(100):  # a loaded machine may see one more (spurious) failover
            try:
                kept = set(reader.get("acks"))
                break
            except lttx.Unavailable:
                if attempt == 99:
                    raise
                stop.wait(0.2)
        lost = [item for item in acknowledged if item not in kept]
        print(f"\n--redis-wait 1, 3 Sentinel failovers, 4 writers: {len(acknowledged)} "
              f"appends acknowledged, {len(lost)} of them lost {lost[:5]}; {len(refused)} "
              f"refused with Unavailable (may or may not have been applied)")
        self.assertEqual(lost, [])
        self.assertTrue(all("Redis" in message for message in refused), refused[:3])
