"""
Acknowledged writes (``--redis-wait 1``) under repeated Sentinel failovers
with 4 concurrent writers: no acknowledged write is lost (about 20 s: the one
long test of the Redis engine's acknowledged writes).
"""

from __future__ import annotations

import threading

from twisted.trial.unittest import TestCase

import lttx

from ..common import Daemon
from ..redis_server import RedisServer
from .test_redis_wait import NO_SYNC_DELAY, replica_of


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
                # (a full sync, or a partial one when it kept a copy on disk)
                master.wait_for_log(r"MASTER <-> REPLICA sync: (Finished with success|"
                                    r"Master accepted a Partial Resynchronization)")
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
