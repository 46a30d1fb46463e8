"""
The real daemon whose journal stops fitting on the disk, then fits again
(issue 19 finding 5), without root: the test lowers the daemon's own
``RLIMIT_FSIZE`` (``prlimit(2)`` on a process of the same user), so its
journal writes fail part-way (``EFBIG``; Python ignores ``SIGXFSZ``) exactly
where a full disk would fail them, and raises it again to give the space back.
"""

from __future__ import annotations

import os
import resource
import threading
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from ..common import Daemon


def journal_path(data_dir: str) -> str:
    folder = os.path.join(data_dir, "variables")
    (name,) = [n for n in os.listdir(folder) if n.startswith("journal-")]
    return os.path.join(folder, name)


class DiskFullDaemonTests(TestCase):
    """Writes stop while the journal cannot grow and resume by themselves."""

    def test_writes_resume_by_themselves_once_the_journal_fits_again(self) -> None:
        """A put whose record does not fit waits (other clients read its value);
        later writes are refused with StorageError; once the file may grow again
        the held put is acknowledged without a restart, writes go on, and a
        restart finds every acknowledged value (the torn record was cut)."""
        daemon = Daemon(self)
        assert daemon.process is not None
        pid = daemon.process.pid
        writer, other = daemon.connect(), daemon.connect()
        writer.put("before", 1)
        size = os.path.getsize(journal_path(daemon.data_dir))
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        # The journal may grow 100 bytes more: the next 1,000-byte record tears.
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size + 100, hard))
        self.addCleanup(lambda: daemon.process.poll() is None and resource.prlimit(
            pid, resource.RLIMIT_FSIZE, (soft, hard)))
        result: dict[str, Any] = {}

        def held_put() -> None:
            try:
                result["reply"] = writer.put("big", "x" * 1000)
            except lttx.LTtxError as e:  # reported by the assertion below
                result["error"] = e

        thread = threading.Thread(target=held_put)
        thread.start()
        daemon.wait_for_log(r"the journal could not be written \(File too large\)")
        self.assertEqual(other.get("big"), "x" * 1000)  # applied, not yet acknowledged
        with self.assertRaises(lttx.StorageError) as refused:
            other.put("during", 2)
        self.assertIn("refused until it can be written again", str(refused.exception))
        self.assertNotIn("during", other.keys())
        self.assertEqual(other.status()["journal"]["writes_refused"], 1)

        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))  # the space is back
        daemon.wait_for_log("the journal can be written again")
        thread.join(15)
        self.assertEqual(result, {"reply": None})
        other.put("after", 3)
        status = other.status()["journal"]
        self.assertEqual((status["writable"], status["journal_outages"]), (True, 1))

        writer.close()
        other.close()
        self.assertIn(daemon.stop(), (0, -15))
        daemon.start()
        again = daemon.connect()
        self.assertEqual({name: again.get(name) for name in sorted(again.keys())},
                         {"after": 3, "before": 1, "big": "x" * 1000})
