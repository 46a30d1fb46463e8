"""
Against the real daemon (``twistd -n lttx``) and the blocking client: the MD5
an upload recorded on its file serves the downloads of the unchanged file
over sendfile; a stored file changed in place since is hashed again and its
new bytes arrive verified; a recorded MD5 that does not match the bytes is
refused, leaving nothing at the destination; the client's memory stays flat
while it receives a large download.
"""

from __future__ import annotations

import os
import threading

from lttx.errors import ChecksumMismatch
from lttx.server.file_disk import DIGEST_ATTRIBUTE, record_digest

from .test_files_integration import MiB, FilesTestCase, make_file, md5_of


def own_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


class RecordedDigestTests(FilesTestCase):

    def setUp(self) -> None:
        super().setUp()
        probe = os.path.join(self.files_dir, ".probe")
        open(probe, "wb").close()
        works = record_digest(probe, "0" * 32)
        os.unlink(probe)
        if not works:
            raise self.skipTest("no user extended attributes here")

    def test_changed_in_place_is_hashed_again_over_sendfile(self) -> None:
        """Bytes rewritten in the stored file after its upload: the download
        brings the new bytes, verified by a fresh MD5 made beside sendfile."""
        source = self.path("c.bin")
        make_file(source, 3 * MiB)
        self.client.send_file(source)
        stored = os.path.join(self.files_dir, "c.bin")
        st = os.stat(stored)
        with open(stored, "r+b") as f:
            f.seek(MiB)
            f.write(b"changed")
        os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        expected = md5_of(stored)
        result = self.client.recv_file("c.bin", self.path("copy.bin"))
        self.assertEqual(result["md5"], expected)
        self.assertEqual(md5_of(self.path("copy.bin")), expected)
        self.daemon.wait_for_log(r"download of c\.bin finished: .* \(sendfile\)")

    def test_a_wrong_recorded_md5_is_refused(self) -> None:
        """A recorded MD5 that is not the file's (size and mtime as recorded):
        ChecksumMismatch, and neither the file nor a partial at the destination."""
        source = self.path("w.bin")
        make_file(source, 2 * MiB)
        self.client.send_file(source)
        stored = os.path.join(self.files_dir, "w.bin")
        st = os.stat(stored)
        os.setxattr(stored, DIGEST_ATTRIBUTE,
                    f"{'e' * 32} {st.st_size} {st.st_mtime_ns}".encode())
        dest = self.path("dest")
        os.makedirs(dest)
        with self.assertRaises(ChecksumMismatch):
            self.client.recv_file("w.bin", dest)
        self.assertEqual(os.listdir(dest), [])

    def test_client_memory_flat_while_downloading(self) -> None:
        """128 MiB down: the client process's RSS grows by less than 48 MiB."""
        source = self.path("big.bin")
        expected = make_file(source, 128 * MiB)
        self.addCleanup(os.unlink, source)
        self.client.send_file(source)
        baseline = own_rss_kib()
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.01):
                peak[0] = max(peak[0], own_rss_kib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = self.client.recv_file("big.bin", self.path("copy.bin"))
        finally:
            stop.set()
            sampler.join()
        self.addCleanup(os.unlink, result["path"])
        self.assertEqual(result["md5"], expected)
        growth_mib = (peak[0] - baseline) / 1024
        self.assertLess(growth_mib, 48, f"client RSS grew by {growth_mib:.1f} MiB")
        self.daemon.wait_for_log(r"download of big\.bin finished: .* \(sendfile, md5 recorded "
                                 r"at upload\)")
