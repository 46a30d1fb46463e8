"""
Acknowledged writes (``--redis-wait N``) with real redis-servers: without a
replica a write is answered Unavailable, with one it succeeds (failovers:
test_redis_wait_failover.py).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

import lttx

from ..common import Daemon
from ..redis_server import RedisServer
from .test_redis_integration import redis_daemon


#: A replica's full resynchronisation starts at once (Redis waits 5 s by default).
NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")


def replica_of(testcase: TestCase, master: RedisServer) -> RedisServer:
    """A replica of ``master``, once its first sync is done."""
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
            # The first WAIT says how many acknowledged; then writes are refused
            # at once, without a WAIT, until a replica is online.
            self.assertRegex(caught.exception.message,
                             "only 0 of 1 replicas acknowledged|fewer than 1 replicas are online")
        self.assertEqual(c.get("x"), None)  # the delete was applied all the same
        self.assertEqual(c.get("n"), 1)
        self.assertFalse(c.delete("x"))  # no change: nothing to confirm
        daemon.wait_for_log(r"only 0 of 1 replicas acknowledged writes within 0.1 s")
        self.assertTrue(c.status()["engine"]["replication_wait"]["short"])
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
