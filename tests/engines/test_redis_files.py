"""
Files across two real daemons (``--engine redis``) on one real redis-server:
uploaded through A, listed, downloaded (MD5 checked) and deleted through B;
A killed: a typed error through B at once; a large file through B in flat
memory; the engine's view (daemons, replication lag) in ``status``.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time

from twisted.trial.unittest import TestCase

import lttx
from lttx import cli
from lttx.client.files import partial_path

from ..common import TOKEN, Daemon, frame
from ..redis_server import RedisServer

MiB = 1024 * 1024


def make_file(path: str, size: int, seed: int = 7) -> str:
    """A file of ``size`` pseudo-random bytes; its MD5."""
    md5 = hashlib.md5()
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[:min(left, len(block))]
            f.write(piece)
            md5.update(piece)
            left -= len(piece)
    return md5.hexdigest()


def md5_of(path: str) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            md5.update(block)
    return md5.hexdigest()


def visible(folder: str) -> list[str]:
    """The files of a files folder (its hidden entries aside)."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def two_daemons(testcase: TestCase, redis: RedisServer) -> tuple[Daemon, Daemon]:
    """Two daemons on ``redis``, started side by side, once each has read the
    other's entry in the daemon directory."""
    daemons = [Daemon(testcase, "--engine", "redis", "--redis", redis.url, start=False)
               for _ in range(2)]
    starting = [threading.Thread(target=d.start) for d in daemons]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    for daemon in daemons:
        daemon.wait_for_log(r"daemons on this Redis: [\d.:]+, [\d.:]+$", timeout=15)
    return daemons[0], daemons[1]


class FilesAcrossDaemonsTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a, self.b = two_daemons(self, self.redis)
        self.ca, self.cb = self.a.connect(), self.b.connect()
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    def a_files(self) -> list[str]:
        return visible(os.path.join(self.a.data_dir, "files"))

    def test_uploaded_through_a_listed_downloaded_deleted_through_b(self) -> None:
        """Up through A; B lists it (holder A), downloads it with A's MD5, deletes it from
        A's disk and from every daemon's listing."""
        source = os.path.join(self.work, "fills.csv")
        expected = make_file(source, 3 * MiB + 12345)
        sent = self.ca.send_file(source)
        self.assertEqual(sent["md5"], expected)
        a_id = self.ca.status()["engine"]["files"]["holder"]

        listed = self.cb.list_files()
        self.assertEqual([(f["name"], f["size"], f["md5"], f["holder"]) for f in listed],
                         [("fills.csv", 3 * MiB + 12345, expected, a_id)])
        self.assertEqual(self.b.connect().list_files(), self.ca.list_files())

        dest = os.path.join(self.work, "down")
        os.makedirs(dest)
        got = self.cb.recv_file("fills.csv", dest)
        self.assertEqual(got["md5"], expected)
        self.assertEqual(md5_of(os.path.join(dest, "fills.csv")), expected)
        self.b.wait_for_log(rf"download of fills\.csv relayed: {3 * MiB + 12345} bytes, "
                            rf"md5 {expected} \(checked by daemon .*; files folder {a_id}\)")
        self.assertEqual(visible(os.path.join(self.b.data_dir, "files")), [])  # relayed only

        self.assertTrue(self.cb.delete_file("fills.csv"))
        self.assertEqual(self.a_files(), [])
        self.assertEqual(self.cb.list_files(), [])
        self.assertEqual(self.ca.list_files(), [])
        self.assertFalse(self.cb.delete_file("fills.csv"))
        with self.assertRaises(lttx.NotFound):
            self.cb.recv_file("fills.csv", dest + "/again")

    def test_last_completed_upload_wins(self) -> None:
        """One name uploaded through A, then through B: B's copy is listed and served
        through A; A deletes its older copy at once."""
        first, second = (os.path.join(self.work, n) for n in ("v1", "v2"))
        make_file(first, 1000, seed=1)
        newer = make_file(second, 2000, seed=2)
        self.ca.send_file(first, name="model.bin")
        self.cb.send_file(second, name="model.bin")
        b_id = self.cb.status()["engine"]["files"]["holder"]
        self.assertEqual([(f["size"], f["holder"]) for f in self.ca.list_files()],
                         [(2000, b_id)])
        got = self.ca.recv_file("model.bin", os.path.join(self.work, "got.bin"))
        self.assertEqual(got["md5"], newer)
        self.a.wait_for_log(r"deleted the copy of model\.bin held here: superseded by the "
                            rf"upload completed on daemon .*; files folder {b_id}\)")
        self.assertEqual(self.a_files(), [])
        self.b.wait_for_log(r"model\.bin now lives here; daemon .* deleted its older copy")

    def held_by_a(self, name: str) -> str:
        """Upload ``name`` through A; A's daemon id."""
        source = os.path.join(self.work, name)
        make_file(source, 50_000)
        self.ca.send_file(source)
        a_id: str = self.ca.status()["engine"]["files"]["holder"]
        return a_id

    def assert_unavailable_at_once(self, name: str, *wanted: str) -> None:
        """Download and delete of ``name`` through B: lttx.Unavailable saying each of
        ``wanted``, within seconds; B serves its other requests as before."""
        for attempt in (lambda: self.cb.recv_file(name, os.path.join(self.work, "x")),
                        lambda: self.cb.delete_file(name)):
            started = time.monotonic()
            with self.assertRaises(lttx.Unavailable) as caught:
                attempt()
            self.assertLess(time.monotonic() - started, 10)
            for text in wanted:
                self.assertIn(text, str(caught.exception))
        self.cb.put("still", "served")
        self.assertEqual(self.cb.get("still"), "served")
        self.assertEqual([f["name"] for f in self.cb.list_files()], [name])

    def test_holder_killed_download_through_b_is_unavailable_at_once(self) -> None:
        """A killed (its port closed, still in the daemon directory for a few seconds):
        a download or delete through B of A's file is lttx.Unavailable naming A."""
        a_id = self.held_by_a("eod.parquet")
        self.a.kill()
        self.assert_unavailable_at_once(
            "eod.parquet", "eod.parquet is held by daemon ",
            f"; files folder {a_id}): cannot be reached")

    def test_holder_stopped_download_through_b_is_unavailable_at_once(self) -> None:
        """A stopped (gone from the daemon directory, its files still listed): a download
        or delete through B of A's file is lttx.Unavailable saying A is down."""
        a_id = self.held_by_a("eod.parquet")
        mark = len(self.b.lines)
        self.a.stop()
        self.b.wait_for_log(r"daemons on this Redis: [\d.:]+$", start=mark)
        self.assert_unavailable_at_once(
            "eod.parquet",
            f"eod.parquet is held by the daemon of files folder {a_id}, which is down")

    def test_large_file_through_b_in_flat_memory(self) -> None:
        """64 MiB held by A downloaded through B: equal MD5, B's RSS grows by far less
        than the file (printed)."""
        size = 64 * MiB
        source = os.path.join(self.work, "ticks.bin")
        expected = make_file(source, size)
        self.ca.send_file(source)
        os.unlink(source)
        baseline = self.b.rss_kib()
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], self.b.rss_kib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            got = self.cb.recv_file("ticks.bin", os.path.join(self.work, "ticks.bin"))
        finally:
            stop.set()
            sampler.join()
        self.assertEqual(got["md5"], expected)
        self.assertEqual(md5_of(got["path"]), expected)
        growth_mib = (peak[0] - baseline) / 1024
        print(f"\n64 MiB relayed A -> B -> client: B's RSS {baseline / 1024:.1f} MiB before, "
              f"peak {peak[0] / 1024:.1f} MiB (+{growth_mib:.1f} MiB)")
        self.assertLess(growth_mib, 16, f"B's RSS grew by {growth_mib:.1f} MiB")

    def test_holder_restarted_keeps_its_files(self) -> None:
        """A restarted on its data dir (a new daemon id): its file is still its own, listed
        and downloaded through B; A's first sweep deletes nothing."""
        source = os.path.join(self.work, "params.json")
        expected = make_file(source, 30_000)
        self.ca.send_file(source)
        holder = self.ca.status()["engine"]["files"]["holder"]
        self.ca.close()
        mark = len(self.b.lines)
        self.a.stop()
        self.b.wait_for_log(r"daemons on this Redis: [\d.:]+$", start=mark)
        self.a.start()
        self.a.wait_for_log(rf"files folder {holder}: 1 files here, 1 in the Redis file "
                            "directory")
        self.b.wait_for_log(r"daemons on this Redis: [\d.:]+, [\d.:]+$", start=mark)
        self.assertEqual(self.a_files(), ["params.json"])
        self.assertEqual([(f["name"], f["holder"]) for f in self.cb.list_files()],
                         [("params.json", holder)])
        got = self.cb.recv_file("params.json", os.path.join(self.work, "params-copy.json"))
        self.assertEqual(got["md5"], expected)
        self.assertNotIn("superseded", self.a.log_text())

    def test_resumed_download_through_b(self) -> None:
        """A download to a target with half the file already there resumes through B at
        that byte (A checks the prefix's MD5) and ends with the whole file's MD5."""
        size = 4 * MiB + 3
        source = os.path.join(self.work, "book.bin")
        expected = make_file(source, size)
        self.ca.send_file(source)
        target = os.path.join(self.work, "book-copy.bin")
        with open(source, "rb") as f, open(partial_path(target), "wb") as part:
            part.write(f.read(size // 2))
        got = self.cb.recv_file("book.bin", target)
        self.assertEqual(got["md5"], expected)
        self.assertEqual(md5_of(target), expected)
        self.b.wait_for_log(rf"download of book\.bin relayed from daemon .* from byte "
                            rf"{size // 2} of {size}")

    def test_holder_killed_mid_relay_cuts_the_client_off(self) -> None:
        """A killed while B relays to a client that stopped reading: the client's
        connection is closed, not left hanging; B goes on serving."""
        size = 64 * MiB
        source = os.path.join(self.work, "big.bin")
        make_file(source, size)
        self.ca.send_file(source)
        os.unlink(source)
        with socket.create_connection(("127.0.0.1", self.b.port), timeout=15) as sock:
            sock.sendall(frame([0, 1, "hello", [TOKEN, {"mode": "file"}]])
                         + frame([0, 2, "download", ["big.bin", 0, None]]))
            first = sock.recv(65536)  # the hello reply, the header, some data
            self.assertTrue(first)
            self.b.wait_for_log(r"download of big\.bin relayed from daemon")
            self.a.kill()
            received = len(first)
            while True:  # what B had buffered, then the end of the connection
                try:
                    data = sock.recv(1 << 20)
                except ConnectionResetError:
                    break
                if not data:
                    break
                received += len(data)
            self.assertLess(received, size)
        self.b.wait_for_log(r"the relay of big\.bin broke off at \d+ of 67108864 bytes")
        self.cb.put("still", "served")
        self.assertEqual(self.cb.get("still"), "served")

    def test_upload_while_redis_is_away_is_listed_once_it_is_back(self) -> None:
        """Redis stopped: an upload through A still completes; listing through B is
        lttx.Unavailable; Redis back (empty): A lists the file, with its MD5, at once,
        and B downloads it."""
        source = os.path.join(self.work, "close.csv")
        expected = make_file(source, 70_000)
        mark_a, mark_b = len(self.a.lines), len(self.b.lines)
        self.redis.stop()
        self.a.wait_for_log(r"redis: lost the connection to Redis", start=mark_a)
        self.b.wait_for_log(r"redis: lost the connection to Redis", start=mark_b)
        self.assertEqual(self.ca.send_file(source)["md5"], expected)
        self.a.wait_for_log(r"close\.csv is kept here but not yet in the Redis file directory")
        with self.assertRaises(lttx.Unavailable):
            self.cb.list_files()
        self.redis.start()
        self.a.wait_for_log(r"close\.csv is now in the Redis file directory")
        # B reconnects on its own back-off: until then its calls are Unavailable.
        self.b.wait_for_log(r"redis: connected to Redis", start=mark_b)
        # (B's view of the daemons is back once both beat again: at most a second or two.)
        deadline = time.monotonic() + 15
        while len(self.cb.status()["engine"]["daemons"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        a_id = self.ca.status()["engine"]["files"]["holder"]
        self.assertEqual([(f["name"], f["md5"], f["holder"]) for f in self.cb.list_files()],
                         [("close.csv", expected, a_id)])
        got = self.cb.recv_file("close.csv", os.path.join(self.work, "close-copy.csv"))
        self.assertEqual(got["md5"], expected)


class EngineStatusTests(TestCase):
    timeout = 60

    def test_status_shows_daemons_and_replication_lag(self) -> None:
        """status (and the CLI) shows each daemon with its addresses and last beat, and
        each replica of the master with its offset and lag."""
        master = RedisServer(self, "--repl-diskless-sync-delay", "0")
        replica = RedisServer(self, "--replicaof", "127.0.0.1", str(master.port))
        replica.wait_for_log(r"MASTER <-> REPLICA sync: Finished with success")
        a, b = two_daemons(self, master)
        client = a.connect()
        deadline = time.monotonic() + 15
        while True:
            engine = client.status()["engine"]
            replicas = (engine.get("replication") or {}).get("replicas") or []
            if replicas and replicas[0]["state"] == "online" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(sorted(d["listening"][0] for d in engine["daemons"].values()),
                         sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]))
        for daemon in engine["daemons"].values():
            self.assertLess(daemon["seen_ago"], 5)
        replication = engine["replication"]
        self.assertEqual(replication["role"], "master")
        self.assertEqual([r["address"] for r in replicas], [f"127.0.0.1:{replica.port}"])
        self.assertEqual(replicas[0]["state"], "online")
        self.assertGreaterEqual(replicas[0]["lag_bytes"], 0)
        self.assertIsInstance(replication["offset"], int)
        self.assertEqual((engine["files"]["shared"], engine["files"]["listed"]), (True, 0))
        # Each daemon shows the id of its files folder, the holder its files are listed by.
        self.assertIn(engine["files"]["holder"],
                      [d["files_id"] for d in engine["daemons"].values()])
        self.assertEqual(len({d["files_id"] for d in engine["daemons"].values()}), 2)
        self.assertNotIn("files_token", repr(engine))
        # `lttx status` shows the same as tables: the daemons, then the replicas.
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["--port", str(a.port), "--token", TOKEN, "status"],
                                  out=out, err=err), 0, err.getvalue())
        text = out.getvalue()
        daemons = text[text.index("  daemons:"):]
        for daemon in (a, b):
            self.assertRegex(daemons, rf"\n    [0-9a-f]{{32}} .*127\.0\.0\.1:{daemon.port}")
        self.assertRegex(text[text.index("    replicas:"):],
                         rf"address .*lag bytes.*\n +127\.0\.0\.1:{replica.port} +online")
