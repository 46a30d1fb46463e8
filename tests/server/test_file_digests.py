"""
The MD5 a checked upload records on its file (``lttx.server.file_disk``
``record_digest``/``recorded_digest``, the ``user.lttx.md5`` extended
attribute): a download of the unchanged file sends it instead of hashing the
file again, through the real session and exact frames; a file changed since
(size or modification time) is hashed again; a recorded MD5 that is wrong
fails the client's check, never passes it.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lttx.server import file_disk
from lttx.server.file_disk import DIGEST_ATTRIBUTE, record_digest, recorded_digest
from lttx.wire import codec

from ..common import frame
from ..test_files_in_memory import SessionTestCase, md5, raw

HAS_XATTR = hasattr(os, "setxattr")


def attribute_works(folder: str) -> bool:
    """Whether the file system of ``folder`` keeps user extended attributes."""
    probe = os.path.join(folder, ".xattr-probe")
    open(probe, "wb").close()
    try:
        return record_digest(probe, "0" * 32)
    finally:
        os.unlink(probe)


class RecordTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        if not HAS_XATTR or not attribute_works(self.folder):
            raise self.skipTest("no user extended attributes here")
        self.path = os.path.join(self.folder, "f.bin")
        with open(self.path, "wb") as f:
            f.write(b"0123456789")

    def recorded(self) -> object:
        with open(self.path, "rb") as f:
            return recorded_digest(f.fileno(), os.fstat(f.fileno()))

    def test_recorded_while_unchanged(self) -> None:
        """The MD5 recorded is read back as long as size and mtime are those recorded."""
        self.assertTrue(record_digest(self.path, md5(b"0123456789")))
        self.assertEqual(self.recorded(), md5(b"0123456789"))
        os.chmod(self.path, 0o600)  # (the inode's ctime changes: still the same bytes)
        self.assertEqual(self.recorded(), md5(b"0123456789"))

    def test_rewritten_in_place_is_not_trusted(self) -> None:
        """Another program rewriting the file (same size, new mtime): no MD5 recorded."""
        record_digest(self.path, md5(b"0123456789"))
        st = os.stat(self.path)
        with open(self.path, "r+b") as f:
            f.write(b"X")
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
        self.assertIsNone(self.recorded())

    def test_grown_or_cut_is_not_trusted(self) -> None:
        """A size other than the recorded one: no MD5, whatever the mtime."""
        record_digest(self.path, md5(b"0123456789"))
        st = os.stat(self.path)
        os.truncate(self.path, 5)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertIsNone(self.recorded())

    def test_garbage_or_missing_attribute(self) -> None:
        """No attribute, or one that is not ``<32 hex> <size> <mtime_ns>``: None."""
        self.assertIsNone(self.recorded())
        st = os.stat(self.path)
        for value in (b"", b"nonsense", b"abc 10 5", b"\xff" * 40,
                      f"{'z' * 32} {st.st_size} {st.st_mtime_ns}".encode()):
            os.setxattr(self.path, DIGEST_ATTRIBUTE, value)
            self.assertIsNone(self.recorded(), value)

    def test_link_is_not_followed(self) -> None:
        """record_digest on a symbolic link records nothing on its target."""
        link = os.path.join(self.folder, "link")
        os.symlink(self.path, link)
        record_digest(link, md5(b"0123456789"))
        self.assertIsNone(self.recorded())


class DownloadDigestTests(SessionTestCase):

    def setUp(self) -> None:
        super().setUp()
        if not HAS_XATTR or not attribute_works(self.directory):
            raise self.skipTest("no user extended attributes here")

    def upload(self, name: str, data: bytes) -> None:
        proto, transport = self.connect()
        self.request(proto, 1, "upload", name, len(data), 0, None)
        proto.dataReceived(raw(data) + frame([codec.REQUEST, 2, "upload_end", [md5(data)]]))
        self.assertEqual(self.sent(transport)[-1][:2], [codec.REPLY, 2])

    def download(self, name: str, offset: int, prefix: object, client_md5: str) -> list:
        proto, transport = self.connect()
        self.request(proto, 1, "download", name, offset, prefix)
        while transport.producer is not None:
            transport.producer.resumeProducing()
        frames = transport.value()
        transport.clear()
        self.request(proto, 2, "download_end", client_md5)
        return [frames] + self.sent(transport)

    def forge(self, name: str, digest: str) -> None:
        """Record ``digest`` on a stored file as if its upload had."""
        path = os.path.join(self.directory, name)
        st = os.stat(path)
        os.setxattr(path, DIGEST_ATTRIBUTE, f"{digest} {st.st_size} {st.st_mtime_ns}".encode())

    def test_upload_records_the_checked_md5(self) -> None:
        """A kept upload carries its MD5 with its size and mtime; a download sends it."""
        data = os.urandom(70_000)
        self.upload("u.bin", data)
        path = os.path.join(self.directory, "u.bin")
        st = os.stat(path)
        self.assertEqual(os.getxattr(path, DIGEST_ATTRIBUTE).decode(),
                         f"{md5(data)} {len(data)} {st.st_mtime_ns}")
        value, reply = self.download("u.bin", 0, None, md5(data))
        header = {"name": "u.bin", "size": len(data), "offset": 0}
        self.assertEqual(value, frame([codec.REPLY, 1, header]) + raw(data))
        self.assertEqual(reply, [codec.REPLY, 2, {"md5": md5(data)}])

    def test_the_recorded_md5_is_what_the_daemon_checks_against(self) -> None:
        """A wrong recorded MD5 (the file unchanged): the client's right MD5 is
        refused with a checksum error naming the recorded one: the daemon did
        not hash the file, and a wrong record fails, never passes."""
        data = b"r" * 5000
        self.upload("r.bin", data)
        self.forge("r.bin", "f" * 32)
        _, reply = self.download("r.bin", 0, None, md5(data))
        self.assertEqual(reply[:3], [codec.ERROR, 2, "checksum"])
        self.assertIn("f" * 32, reply[3])

    def test_changed_file_is_hashed_again(self) -> None:
        """A stored file rewritten in place after its upload: its new bytes' MD5."""
        self.upload("c.bin", b"old" * 1000)
        path = os.path.join(self.directory, "c.bin")
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.write(b"new")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        new = b"new" + b"old" * 999
        value, reply = self.download("c.bin", 0, None, md5(new))
        self.assertTrue(value.endswith(raw(new)))
        self.assertEqual(reply, [codec.REPLY, 2, {"md5": md5(new)}])

    def test_resumed_download_gets_the_whole_files_md5(self) -> None:
        """Resuming at the right byte: the rest of the file, and the whole file's MD5."""
        data = os.urandom(9000)
        self.upload("p.bin", data)
        value, reply = self.download("p.bin", 4000, md5(data[:4000]), md5(data))
        header = {"name": "p.bin", "size": 9000, "offset": 4000}
        self.assertEqual(value, frame([codec.REPLY, 1, header]) + raw(data[4000:]))
        self.assertEqual(reply, [codec.REPLY, 2, {"md5": md5(data)}])

    def test_no_attributes_still_checks(self) -> None:
        """Where nothing can be recorded, uploads are kept and downloads hash the file."""
        self.patch(file_disk, "record_digest", lambda path, md5_hex: False)
        data = b"n" * 3000
        self.upload("n.bin", data)
        with self.assertRaises(OSError):
            os.getxattr(os.path.join(self.directory, "n.bin"), DIGEST_ATTRIBUTE)
        _, reply = self.download("n.bin", 0, None, md5(data))
        self.assertEqual(reply, [codec.REPLY, 2, {"md5": md5(data)}])
