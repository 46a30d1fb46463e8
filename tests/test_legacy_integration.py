"""
The ORIGINAL ``tx.py`` client, unmodified, against a real daemon's
``--legacy-listen`` port, next to native clients on its ``--listen`` port.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time

from twisted.trial.unittest import TestCase

import lttx

from .common import TOKEN
from .oldclient import OldClient, legacy_daemon, seed_client_dir


def start(old: OldClient, port: int, token: str = TOKEN) -> None:
    """What every old script does first."""
    old.run(f"tx1 = txl('127.0.0.1', {port}, {token!r}, show=False)\ntx1.start_tx()")


def raw_handshake(port: int, handshake: dict, read: bool = True) -> tuple[socket.socket, bytes]:
    """A connection to the legacy port with a handshake sent by hand; its answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(json.dumps(handshake).encode("utf-8"))
    return s, (s.recv(1024) if read else b"")


class OldClientTests(TestCase):
    """Variables, channels and the example script, old client and native side by side."""

    def setUp(self) -> None:
        seed_client_dir()  # skip early if the original client is not there
        self.daemon, self.port = legacy_daemon(self)
        self.native = self.daemon.connect()
        self.old = OldClient(self)
        start(self.old, self.port)

    def test_example_script_steps(self) -> None:
        """example.py's own steps: put/get a list, start_txg, push, Q.get, then 10,000 pushes."""
        old = self.old
        self.assertEqual(old.run("""
tem_list = [1,'2',4,{'a':'cc','b':80}]
tx1.put('test_list', tem_list)
cc = tx1.get('test_list')
cc"""), [1, "2", 4, {"a": "cc", "b": 80}])
        self.assertEqual(old.run("""
tx1.start_txg('test')
tx1.push('消息头', 'this is a test,这是一条测试消息', 'test')
tx1.Q.get(timeout=10)"""), "消息头|this is a test,这是一条测试消息")
        received = old.run("""
num = 10000
for i in range(num):
    tx1.push('test', str(i), 'test')
[tx1.Q.get(timeout=20) for _ in range(num)]""", timeout=60)
        self.assertEqual(received, [f"test|{i}" for i in range(10000)])
        self.assertEqual(self.native.get("test_list"), [1, "2", 4, {"a": "cc", "b": 80}])

    def test_variables_both_ways(self) -> None:
        """Nested values, dict and list operations; what one side writes the other reads,
        with the old conventions at the old edge (JSON strs decoded, dict keys str)."""
        old, native = self.old, self.native
        nested = {"a": [1, 2.5, {"b": None, "c": [True, "x"]}], "d": {"e": {"f": "深"}}}
        old.run(f"tx1.put('nested', {nested!r})")
        self.assertEqual(old.run("tx1.get('nested')"), nested)
        self.assertEqual(native.get("nested"), nested)
        # The old put of a str holding JSON stored it decoded.
        old.run("tx1.put('cfg', json.dumps({'a': 1, 'b': [1, 2]}))")
        self.assertEqual(old.run("tx1.get('cfg')['a']"), 1)
        self.assertEqual(native.get("cfg"), {"a": 1, "b": [1, 2]})
        # (An old write has no reply: a read on its connection orders what follows.)
        self.assertEqual(old.run("tx1.put('plain', 'not json')\ntx1.get('plain')"), "not json")
        self.assertEqual(native.get("plain"), "not json")
        # dict_change; keys are JSON's: str.
        old.run("tx1.dict_change('pos', '600000.SH', 100)\ntx1.dict_change('pos', 5, 'five')")
        self.assertEqual(old.run("tx1.get_dict_value('pos', '600000.SH')"), 100)
        self.assertEqual(old.run("tx1.get_dict_value('pos', 5)"), "five")
        self.assertIsNone(old.run("tx1.get_dict_value('pos', 'none')"))
        self.assertIsNone(old.run("tx1.get_dict_value('no_such', 'k')"))
        self.assertEqual(native.get("pos"), {"600000.SH": 100, "5": "five"})
        # Lists.
        old.run("tx1.put('orders', [])\n"
                "for i in range(5): tx1.list_append('orders', {'id': i})\n"
                "tx1.list_pop('orders', '0')\ntx1.list_remove('orders', {'id': 3})")
        self.assertEqual(old.run("tx1.get('orders')"), [{"id": 1}, {"id": 2}, {"id": 4}])
        self.assertEqual(old.run("tx1.get_list_value('orders', -1)"), {"id": 4})
        self.assertIsNone(old.run("tx1.get_list_value('orders', 99)"))
        self.assertIsNone(old.run("tx1.get_list_value('no_list', 0)"))
        self.assertEqual(native.get("orders"), [{"id": 1}, {"id": 2}, {"id": 4}])
        # Native writes, the old client reads: keys come back as str.
        native.put("native", {1: "one", "l": [b"raw", (1, 2)]})
        self.assertEqual(old.run("tx1.get('native')"), {"1": "one", "l": ["raw", [1, 2]]})
        self.assertIsNone(old.run("tx1.get('missing')"))
        native.dict_change("npos", 7, "seven")
        self.assertEqual(old.run("tx1.get_dict_value('npos', 7)"), "seven")

    def test_refused_write_is_logged_and_the_connection_goes_on(self) -> None:
        """A write that cannot be applied is logged; later requests are served in order."""
        old = self.old
        old.run("tx1.put('l', [1])\ntx1.dict_change('l', 'k', 1)")
        self.assertEqual(old.run("tx1.get('l')"), [1])
        self.daemon.wait_for_log(r"legacy dict_change refused: wrong_type")

    def test_dataframes(self) -> None:
        """put_df/get_df: a DataFrame round-trips; native clients see its JSON records."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            self.skipTest("pandas is not installed")
        got = self.old.run("""
import pandas as pd
df = pd.DataFrame({'code': ['600000.SH', '000001.SZ'], 'price': [10.5, 11.25]})
tx1.put_df('bars', df)
back = tx1.get_df('bars')
[back.equals(df), list(back.columns), len(tx1.get_df('nothing'))]""")
        self.assertEqual(got, [True, ["code", "price"], 0])
        self.assertEqual(self.native.get("bars"), [{"code": "600000.SH", "price": 10.5},
                                                   {"code": "000001.SZ", "price": 11.25}])

    def test_channels_both_ways(self) -> None:
        """An old push reaches a native subscriber split at the first '|', and a native
        push reaches the old subscriber as "key|data"; push_plus too."""
        sub = self.daemon.connect()
        sub.subscribe("hq")
        self.old.run("tx1.push('600000.SH', '10.23|10.24', 'hq')")
        self.assertEqual(sub.Q.get(timeout=10), lttx.Message("hq", "600000.SH", "10.23|10.24", 1))
        self.old.run("tx1.start_plus()\ntx1.push_plus('000001.SZ', '9.9', 'hq')")
        self.assertEqual(sub.Q.get(timeout=10), lttx.Message("hq", "000001.SZ", "9.9", 2))
        self.old.run("tx1.start_txg('cb_hq')")
        self.native.push("600000.SH", "10.25|10.26", "cb_hq")
        self.native.push("k", {"a": 1}, "cb_hq")
        self.assertEqual(self.old.run("[tx1.Q.get(timeout=10) for _ in range(2)]"),
                         ["600000.SH|10.25|10.26", "k|{'a': 1}"])

    def test_heartbeats_are_not_published(self) -> None:
        """start_tx's heartbeats on heartbeat0 reach no subscriber, native or old."""
        sub = self.daemon.connect()
        sub.subscribe("heartbeat0")
        old2 = OldClient(self)
        start(old2, self.port)
        deadline = time.monotonic() + 20
        while self.native.status()["legacy"]["heartbeats"] < 2:
            self.assertLess(time.monotonic(), deadline, "no heartbeat counted")
            time.sleep(0.1)
        self.native.push("fence", "1", "heartbeat0")
        self.assertEqual(sub.Q.get(timeout=10).key, "fence")

    def test_channels_with_at_and_password(self) -> None:
        """start_txg('a@b', pwd) sets both channels' password; a native subscriber needs it;
        a wrong password on the legacy port is refused."""
        self.old.run("tx1.start_txg('chan_a@chan_b', 'pw')")
        other = self.daemon.connect()
        self.assertRaises(lttx.AuthError, other.subscribe, "chan_a", password="wrong")
        self.assertEqual(other.subscribe("chan_a@chan_b", password="pw"),
                         {"chan_a": 1, "chan_b": 1})
        self.native.push("k", "to a", "chan_a")
        self.native.push("k", "to b", "chan_b")
        got = self.old.run("sorted(tx1.Q.get(timeout=10) for _ in range(2))")
        self.assertEqual(got, ["k|to a", "k|to b"])
        s, answer = raw_handshake(self.port, {"con_type": "push_mode", "who": "chan_a",
                                              "pwd": "nope", "tocken": TOKEN})
        self.addCleanup(s.close)
        self.assertEqual(json.loads(answer)["code"], -1)
        self.assertIn("wrong password", json.loads(answer)["msg"])


class OldFilesTests(TestCase):
    """send_file/recv_file of the original client, MD5 verified by the daemon."""

    def setUp(self) -> None:
        seed_client_dir()
        self.daemon, self.port = legacy_daemon(self)
        self.old = OldClient(self)
        start(self.old, self.port)
        self.files = os.path.join(self.daemon.data_dir, "files")

    def test_send_and_recv_file(self) -> None:
        """An upload is kept once its MD5 matches; the download is the same bytes; native
        clients see it; a native upload reaches the old client."""
        data = os.urandom(3 * 1024 * 1024 + 17)
        with open(os.path.join(self.old.cwd, "ticks.bin"), "wb") as f:
            f.write(data)
        self.old.run("tx1.send_file('./ticks.bin', show_on=False)")
        self.daemon.wait_for_log(r"legacy upload of ticks.bin finished: 3145745 bytes, md5 "
                                 + hashlib.md5(data).hexdigest() + " verified")
        code, _ = self.old.run("tx1.recv_file('ticks.bin', file_path='./down')")
        self.assertEqual(code, 0)
        with open(os.path.join(self.old.cwd, "down", "ticks.bin"), "rb") as f:
            self.assertEqual(hashlib.md5(f.read()).hexdigest(), hashlib.md5(data).hexdigest())
        native = self.daemon.connect()
        self.assertIn("ticks.bin", [f["name"] for f in native.list_files()])
        local = os.path.join(self.mktemp())
        os.makedirs(local)
        with open(os.path.join(local, "native.txt"), "wb") as f:
            f.write(b"from the new client\n")
        native.send_file(os.path.join(local, "native.txt"), progress=False)
        self.assertEqual(self.old.run("tx1.recv_file('native.txt')")[0], 0)
        with open(os.path.join(self.old.cwd, "native.txt"), "rb") as f:
            self.assertEqual(f.read(), b"from the new client\n")
        self.assertEqual(self.old.run("tx1.recv_file('absent.txt')")[0], -1)

    def test_disk_reserve(self) -> None:
        """An old upload while the disk has less free than --disk-reserve is refused
        (the daemon says why in its log); nothing is kept."""
        stats = os.statvfs(self.daemon.data_dir)
        daemon, port = legacy_daemon(self, "--disk-reserve",
                                     str(stats.f_blocks * stats.f_frsize + 1024 ** 2))
        old = OldClient(self)
        start(old, port)
        with open(os.path.join(old.cwd, "big.bin"), "wb") as f:
            f.write(b"x" * 100_000)
        old.run("tx1.send_file('./big.bin', show_on=False)")
        daemon.wait_for_log(r"--disk-reserve of \d+ bytes kept for its journal")
        self.assertEqual(daemon.connect().list_files(), [])

    def test_hostile_names_are_refused(self) -> None:
        """A name with a separator, '..' or a leading dot is refused, up and down; nothing
        is written outside the files folder."""
        with open(os.path.join(self.old.cwd, ".bashrc"), "wb") as f:
            f.write(b"evil")
        self.old.run("tx1.send_file('./.bashrc', show_on=False)")
        self.daemon.wait_for_log(r"legacy file_mode refused: bad_file_name")
        self.assertEqual(self.old.run("tx1.recv_file('../variables/snapshot')")[0], -1)
        s, answer = raw_handshake(self.port, {
            "con_type": "file_mode", "tocken": TOKEN, "file_mode": "upload_file",
            "file_name": "..\\..\\x", "file_hash": "0" * 32})
        s.close()
        self.assertEqual(json.loads(answer)["code"], -1)
        self.assertEqual(sorted(os.listdir(self.files)), [".partial"])
        self.assertEqual(os.listdir(os.path.join(self.files, ".partial")), [])

    def test_a_link_in_the_files_folder_is_not_served(self) -> None:
        """A symlink placed in files/ pointing outside: the old client is told the file
        does not exist, as the native port does (issue 19, finding 12)."""
        secret = os.path.join(self.mktemp())
        with open(secret, "wb") as f:
            f.write(b"outside the files folder")
        os.symlink(os.path.abspath(secret), os.path.join(self.files, "passwd"))
        self.assertEqual(self.old.run("tx1.recv_file('passwd')")[0], -1)
        self.assertFalse(os.path.exists(os.path.join(self.old.cwd, "passwd")))

    def test_md5_mismatch_keeps_nothing(self) -> None:
        """An upload whose bytes do not match the client's MD5 is not kept (logged)."""
        s, answer = raw_handshake(self.port, {
            "con_type": "file_mode", "tocken": TOKEN, "file_mode": "upload_file",
            "file_name": "bad.bin", "file_hash": hashlib.md5(b"other").hexdigest()})
        self.assertEqual(answer, b"i am ok")
        s.sendall(b"these bytes")
        s.close()
        self.daemon.wait_for_log(r"legacy upload of bad.bin not kept: the daemon received MD5")
        self.assertEqual(sorted(os.listdir(self.files)), [".partial"])


class BadInputTests(TestCase):
    """What a broken or hostile peer sends the legacy port: a log line, nothing more."""

    def setUp(self) -> None:
        self.daemon, self.port = legacy_daemon(self, "--max-frame", "1MiB")

    def assert_still_serving(self) -> None:
        s, answer = raw_handshake(self.port, {"con_type": "put_mode", "tocken": TOKEN})
        self.addCleanup(s.close)
        self.assertEqual(json.loads(answer)["code"], 0)
        body = json.dumps({"func": "get", "value": "x", "who": None}).encode()
        s.sendall(struct.pack("<Q", len(body)) + body)
        (length,) = struct.unpack("<Q", s.recv(8, socket.MSG_WAITALL))
        self.assertEqual(json.loads(json.loads(s.recv(length, socket.MSG_WAITALL))),
                         {"value": None})

    def test_wrong_token(self) -> None:
        s, answer = raw_handshake(self.port, {"con_type": "put_mode", "tocken": "wrong"})
        s.close()
        self.assertEqual(json.loads(answer)["code"], "-1")
        self.daemon.wait_for_log(r"failed to authenticate on the legacy port: wrong tocken")
        self.assert_still_serving()

    def test_native_hello_and_garbage(self) -> None:
        """A native client on the legacy port, or garbage, is told and closed."""
        for junk in (b"\x00\x00\x00\x10\x94\x00\x00\xa5hello", b"GET / HTTP/1.1\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s.sendall(junk)
            self.assertEqual(json.loads(s.recv(1024))["code"], -1)
            self.assertEqual(s.recv(1024), b"")
            s.close()
        self.daemon.wait_for_log(r"bad legacy handshake: a legacy connection starts with a JSON")
        self.assert_still_serving()

    def test_oversized_frame_refused_before_buffering(self) -> None:
        """A length over --max-frame closes the connection at once (8 bytes read)."""
        s, _ = raw_handshake(self.port, {"con_type": "put_mode", "tocken": TOKEN})
        s.sendall(struct.pack("<Q", 2**40))
        self.assertEqual(s.recv(1024), b"")
        s.close()
        self.daemon.wait_for_log(r"sent a legacy frame of 1099511627776 bytes, over the limit")
        self.assert_still_serving()

    def test_bad_requests(self) -> None:
        """Frames that are not JSON, unknown funcs and bad values: logged, then served on."""
        s, _ = raw_handshake(self.port, {"con_type": "put_mode", "tocken": TOKEN})
        self.addCleanup(s.close)
        for body in (b"\xff\xfe not json", b"[1, 2]", json.dumps({"func": "nuke"}).encode(),
                     json.dumps({"func": "put", "value": 5}).encode(),
                     json.dumps({"func": "push", "value": "k|v", "who": None}).encode()):
            s.sendall(struct.pack("<Q", len(body)) + body)
        body = json.dumps({"func": "get_list_value", "value": ["x", "nope"]}).encode()
        s.sendall(struct.pack("<Q", len(body)) + body)
        (length,) = struct.unpack("<Q", s.recv(8, socket.MSG_WAITALL))
        reply = json.loads(json.loads(s.recv(length, socket.MSG_WAITALL)))
        self.assertEqual(reply["code"], -1)
        self.daemon.wait_for_log(r"legacy request refused: bad_request: unknown func 'nuke'")
        self.assertNotIn("Traceback", self.daemon.log_text())
        self.assert_still_serving()


class ThroughputTests(TestCase):
    """The old client and the new one on one channel at 10,000 messages/s each."""

    def test_old_and_new_publishers_nothing_lost(self) -> None:
        seed_client_dir()
        daemon, port = legacy_daemon(self)
        sub = daemon.connect()
        sub.subscribe("hq")
        old = OldClient(self)
        start(old, port)
        old.run("tx1.start_txg('hq')")
        n = 20_000
        native = daemon.connect()

        def publish() -> None:
            t0 = time.monotonic()
            for i in range(n):
                native.push("new", str(i), "hq")
                if i % 500 == 499:
                    time.sleep(max(0.0, t0 + (i + 1) / 10_000 - time.monotonic()))

        publisher = threading.Thread(target=publish)
        publisher.start()
        old.run(f"""
import time
t0 = time.monotonic()
for i in range({n}):
    tx1.push('old', str(i), 'hq')
    if i % 500 == 499:
        time.sleep(max(0.0, t0 + (i + 1) / 10000 - time.monotonic()))""")
        publisher.join()
        got: dict[str, list[str]] = {"old": [], "new": []}
        for _ in range(2 * n):
            message = sub.Q.get(timeout=30)
            got[message.key].append(message.data)
        self.assertEqual(got["old"], [str(i) for i in range(n)])
        self.assertEqual(got["new"], [str(i) for i in range(n)])
        # The old subscriber got both streams too, each in order.
        counts = old.run(f"""
seen = {{'old': [], 'new': []}}
for _ in range({2 * n}):
    k, d = tx1.Q.get(timeout=30).split('|', 1)
    seen[k].append(int(d))
[seen['old'] == list(range({n})), seen['new'] == list(range({n}))]""", timeout=90)
        self.assertEqual(counts, [True, True])


class RolesTests(TestCase):
    """A roles file applies on the legacy port as on the native one."""

    def test_old_client_with_a_limited_token(self) -> None:
        seed_client_dir()
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"tokens": [
                {"name": "admin", "token": "admin-token", "rights": ["all"]},
                {"name": "feed", "token": "feed-token", "rights": ["publish:hq_*", "read"]}]}, f)
        daemon, port = legacy_daemon(self, "--token-file", path, token=None)
        native = daemon.connect(token="admin-token")
        native.put("limits", {"max": 5})
        sub = daemon.connect(token="admin-token")
        sub.subscribe("hq_sh@orders")
        old = OldClient(self)
        start(old, port, token="feed-token")
        self.assertEqual(old.run("tx1.put('limits', 1)\ntx1.push('k', 'no', 'orders')\n"
                                 "tx1.push('600000.SH', '10.2', 'hq_sh')\ntx1.get('limits')"),
                         {"max": 5})
        self.assertEqual(sub.Q.get(timeout=10), lttx.Message("hq_sh", "600000.SH", "10.2", 1))
        daemon.wait_for_log(r"legacy put refused: forbidden")
        daemon.wait_for_log(r"legacy push refused: forbidden")
        self.assertEqual(native.get("limits"), {"max": 5})
